"""Base-layer decoders the cloud runs on every frame, and the human-view decoder.

The model that coded a layer is named by the weights digest in its header, so the cloud needs
no per-camera configuration: it finds the package on the model search path
(``$ICM_MODEL_PATH`` and the shipped weights) and caches the loaded codec.

The ingest pipeline depends on the :class:`Decoder` protocol only. Two implementations:
:class:`CodecDecoder` (the codec library) and :class:`NoopDecoder`, which validates the
container only; the throughput benchmark uses it to measure what the service itself costs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from icm_codec import ModelPackage, ScalableCodec, load_package
from icm_codec.bitstream import LayerHeader, ParsedLayer, parse_layer
from icm_codec.errors import (
    ChecksumError,
    HeaderError,
    ICMError,
    ModelMismatchError,
    ModelPackageError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from icm_codec.registry import find_package

__all__ = ["REJECT_REASONS", "CodecDecoder", "Decoded", "Decoder", "NoopDecoder",
           "RejectedLayerError", "parse_received", "reject_reason"]

# The ``reason`` label of icm_cloud_frames_rejected_total: a fixed set, so that a hostile or
# broken layer cannot make label values (the message, with its model ids, goes to the edge and
# the log instead).
REJECT_REASONS = ("checksum", "truncated", "unsupported_version", "bad_header", "corrupt",
                  "unknown_model", "model_mismatch", "decode_failed")


def reject_reason(e: BaseException) -> str:
    """The bounded reason code of a codec error (one of :data:`REJECT_REASONS`)."""
    for cls, code in ((ChecksumError, "checksum"), (TruncatedStreamError, "truncated"),
                      (UnsupportedVersionError, "unsupported_version"),
                      (HeaderError, "bad_header"), (ModelPackageError, "unknown_model"),
                      (ModelMismatchError, "model_mismatch")):
        if isinstance(e, cls):
            return code
    return getattr(e, "reason", "corrupt") if isinstance(e, RejectedLayerError) else "corrupt"


class RejectedLayerError(ValueError):
    """A layer the cloud cannot decode (corrupt, unknown model): the frame is rejected.
    ``reason`` is its bounded code (:data:`REJECT_REASONS`), the message says the rest."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason if reason in REJECT_REASONS else "corrupt"


@dataclass
class Decoded:
    header: LayerHeader
    image: np.ndarray | None  # the machine image (None for the no-op decoder)


class Decoder(Protocol):
    """What the ingest pipeline needs of a base-layer decoder.

    A received layer is parsed once, by :meth:`check` (the checksum is verified there); the
    :class:`~icm_codec.bitstream.ParsedLayer` it returns is what goes on to :meth:`decode`.
    """

    name: str

    def check(self, layer: bytes) -> ParsedLayer:
        """The parsed layer, or :class:`RejectedLayerError` if it cannot be decoded."""
        ...

    def decode(self, layers: Sequence[ParsedLayer | bytes]) -> list[Decoded]:
        """One :class:`Decoded` per layer, in order; every layer has passed :meth:`check`.
        ParsedLayers are not parsed again; bytes (a stored frame's layer) are, once."""
        ...


def parse_received(layer: bytes | ParsedLayer, what: str = "base layer") -> ParsedLayer:
    """A received layer parsed (a :class:`ParsedLayer` passes through, not parsed again), or
    :class:`RejectedLayerError` with the reason code of its defect."""
    try:
        return parse_layer(layer)
    except ICMError as e:
        raise RejectedLayerError(f"corrupt {what}: {e}", reject_reason(e)) from e


class NoopDecoder:
    """Parses and checks the container, decodes nothing."""

    name = "noop"

    def check(self, layer: bytes) -> ParsedLayer:
        return parse_received(layer)

    def decode(self, layers: Sequence[ParsedLayer | bytes]) -> list[Decoded]:
        return [Decoded(parse_received(b).header, None) for b in layers]


class CodecDecoder:
    """Real decoding with the codec library; thread-safe (one lock per process: the device is
    the bottleneck anyway). Frames of one model and size are decoded as one batch."""

    name = "codec"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._packages: dict[bytes, ModelPackage] = {}
        self._codecs: dict[tuple[bytes, bytes], ScalableCodec] = {}

    def _package(self, digest16: bytes, model_id: str) -> ModelPackage:
        pkg = self._packages.get(digest16)
        if pkg is None:
            try:
                pkg = load_package(find_package(digest16.hex()), self.device)
            except ModelPackageError as e:
                raise RejectedLayerError(f"no model package for {model_id!r} "
                                         f"({digest16.hex()[:12]}) on this cloud: {e}",
                                         "unknown_model") from e
            self._packages[digest16] = pkg
        return pkg

    def codec(self, base: LayerHeader, enhancement: LayerHeader | None = None) -> ScalableCodec:
        key = (base.model_digest, enhancement.model_digest if enhancement else b"")
        codec = self._codecs.get(key)
        if codec is None:
            bpkg = self._package(base.model_digest, base.model_id)
            epkg = (self._package(enhancement.model_digest, enhancement.model_id)
                    if enhancement else None)
            try:
                codec = ScalableCodec(bpkg, epkg, self.device)
            except (ValueError, ICMError) as e:
                raise RejectedLayerError(str(e), "model_mismatch") from e
            self._codecs[key] = codec
        return codec

    def check(self, layer: bytes) -> ParsedLayer:
        parsed = parse_received(layer)
        with self._lock:
            codec = self.codec(parsed.header)
        try:
            codec.base.parse(parsed)  # this model's layer? (no second parse)
        except ICMError as e:
            raise RejectedLayerError(str(e), reject_reason(e)) from e
        return parsed

    def decode(self, layers: Sequence[ParsedLayer | bytes]) -> list[Decoded]:
        """Every layer must have passed :meth:`check`."""
        parsed = [parse_received(b) for b in layers]  # passes ParsedLayers through
        images: dict[int, np.ndarray] = {}
        groups: dict[bytes, list[int]] = {}
        for i, lay in enumerate(parsed):
            groups.setdefault(lay.header.model_digest, []).append(i)
        with self._lock:
            for idx in groups.values():
                codec = self.codec(parsed[idx[0]].header)
                batch = codec.decode_machine_batch([parsed[i] for i in idx])
                images.update(zip(idx, batch, strict=True))
        return [Decoded(lay.header, images[i]) for i, lay in enumerate(parsed)]

    def decode_human(self, base: bytes | ParsedLayer, enhancement: bytes | ParsedLayer
                     ) -> np.ndarray:
        b = parse_received(base, "layer")
        e = parse_received(enhancement, "layer")
        with self._lock:
            codec = self.codec(b.header, e.header)
            try:
                return codec.decode_human(b, e)
            except ICMError as err:
                raise RejectedLayerError(str(err), reject_reason(err)) from err
