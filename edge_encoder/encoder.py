"""The edge's codecs: the current base rate point (switchable by the cloud) and the enhancement
codec, with eager or lazy enhancement encoding."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import numpy as np

from icm_codec import Refinement, ScalableCodec, load_package
from icm_codec.registry import HUMAN_LAYER_KINDS, default_package, find_package, list_packages

from .metrics import EdgeMetrics

__all__ = ["EdgeEncoder", "EncodedFrame"]


@dataclass(frozen=True)
class EncodedFrame:
    base: bytes
    enhancement: bytes | None
    raw_png: bytes | None


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class EdgeEncoder:
    """Encodes frames; thread-safe. One lock guards the codec table and the capture path; a
    lazy enhancement request runs outside it (the models are read-only), so a slow human layer
    never holds up the live base stream.

    Args:
        base: model id or path of the starting base codec (None: the shipped default).
        enhancement: model id or path of the enhancement codec (None: the shipped default;
            "" : no enhancement layers).
        mode: ``eager`` encodes the enhancement at capture, ``lazy`` keeps the raw frame and
            encodes when the cloud asks.
        refine_steps: encoder-side refinement of the enhancement layer (``icm_codec.refine``):
            fewer bits at equal quality for ~``refine_steps`` decodes of encoder time (0: off).
    """

    def __init__(self, base: str | None = None, enhancement: str | None = None,
                 mode: str = "lazy", metrics: EdgeMetrics | None = None,
                 device: str = "cpu", refine_steps: int = 0) -> None:
        if mode not in ("eager", "lazy"):
            raise ValueError(f"enhancement mode must be eager or lazy, got {mode!r}")
        self.mode = mode
        self._refine = Refinement(steps=refine_steps)
        self.device = device
        self.metrics = metrics or EdgeMetrics()
        self._lock = threading.Lock()
        base_path = find_package(base, "base") if base else default_package("base")
        self._enh_pkg = None
        if enhancement != "":
            enh_path = (find_package(enhancement, HUMAN_LAYER_KINDS) if enhancement
                        else default_package("enhancement"))
            self._enh_pkg = load_package(enh_path, device)
        self._codecs: dict[str, ScalableCodec] = {}
        self.current = self._load(str(base_path))

    def _load(self, name: str) -> str:
        """Load a base codec by id or path; returns its model id."""
        pkg = load_package(find_package(name, "base"), self.device)
        enh = self._enh_pkg
        if enh is not None and enh.config.base_digest not in ("", pkg.digest):
            enh = None  # the enhancement codec was trained on another base rate point
        codec = ScalableCodec(pkg, enh, self.device, refine=self._refine)
        self._codecs[pkg.config.model_id] = codec
        return pkg.config.model_id

    @property
    def codec(self) -> ScalableCodec:
        return self._codecs[self.current]

    @staticmethod
    def available_bases() -> list[str]:
        return sorted({p.model_id for p in list_packages() if p.kind == "base"})

    def switch_base(self, model_id: str) -> None:
        """Switch the base rate point (a settings change from the cloud)."""
        with self._lock:
            if model_id not in self._codecs:
                self._load(model_id)
            self.current = model_id

    def describe(self) -> dict[str, str]:
        c = self.codec
        out = {"base_model_id": c.base.package.config.model_id,
               "base_model_digest": c.base.package.digest}
        if c.enhancement is not None:
            out["enhancement_model_id"] = c.enhancement.package.config.model_id
            out["enhancement_model_digest"] = c.enhancement.package.digest
        return out

    def encode(self, frame: np.ndarray, frame_id: int) -> EncodedFrame:
        m = self.metrics
        with self._lock:
            codec = self.codec
            t0 = time.perf_counter()
            base = codec.encode_base(frame, frame_id=frame_id)
            m.encode_seconds.labels("base").observe(time.perf_counter() - t0)
            m.encoded.labels("base").inc()
            m.layer_bytes.labels("base").inc(len(base))
            if codec.enhancement is None:
                return EncodedFrame(base, None, None)
            if self.mode == "lazy":
                return EncodedFrame(base, None, _png(frame))
            return EncodedFrame(base, self._enhance(codec, frame, base), None)

    def _enhance(self, codec: ScalableCodec, frame: np.ndarray, base: bytes) -> bytes:
        t0 = time.perf_counter()
        layer = codec.encode_enhancement(frame, base)
        self.metrics.encode_seconds.labels("enhancement").observe(time.perf_counter() - t0)
        self.metrics.encoded.labels("enhancement").inc()
        self.metrics.layer_bytes.labels("enhancement").inc(len(layer))
        return layer

    def encode_enhancement(self, raw_png: bytes, base: bytes) -> bytes:
        """Lazy mode: the enhancement layer of a kept raw frame, bound to its base bytes."""
        from icm_codec.bitstream import unpack_layer

        digest16 = unpack_layer(base).header.model_digest
        with self._lock:
            codec = next((c for c in self._codecs.values()
                          if c.base.package.digest_bytes[:16] == digest16), None)
        if codec is not None:
            if codec.enhancement is None:
                raise ValueError("no enhancement codec for this frame's base rate point")
            return self._enhance(codec, _unpng(raw_png), base)
        raise ValueError("this frame's base codec is no longer loaded")
