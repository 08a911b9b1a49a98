"""The library's front door: frames in, layer byte strings out, and back.

::

    codec = ScalableCodec.load("base.icmpkg", "enhancement.icmpkg")
    base = codec.encode_base(frame)                    # edge, every frame
    enh = codec.encode_enhancement(frame, base)        # edge, on request
    machine = codec.decode_machine(base)               # cloud, every frame
    human = codec.decode_human(base, enh)              # cloud, when an analyst asks

Frames are ``H x W x 3`` uint8 RGB arrays (or PIL images). Any size works: frames are padded by
edge replication to a multiple of 64 and cropped back after decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .bitstream import (
    Layer,
    LayerHeader,
    LayerKind,
    ParsedLayer,
    pack_layer,
    parse_layer,
    read_header,
)
from .errors import LayerPairingError, ModelMismatchError
from .models import base_reference
from .package import ModelPackage, load_package
from .refine import Refinement
from .tiling import Tiling

__all__ = ["PAD_LOG2", "LayerCodecRunner", "ScalableCodec", "frame_to_tensor", "tensor_to_frame"]

PAD_LOG2 = 6  # total stride of y (16) times that of z (4)
LayerInput = bytes | ParsedLayer  # a layer's bytes, or the object its one parse made


def frame_to_tensor(frame: np.ndarray | object) -> Tensor:
    """HxWx3 uint8 RGB (numpy or PIL) -> 1x3xHxW float in [0, 1]."""
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got shape {arr.shape} {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] > 65535 or arr.shape[1] > 65535:
        raise ValueError(f"frame size {arr.shape[1]}x{arr.shape[0]} out of range")
    t = torch.from_numpy(np.array(arr[:, :, :3], copy=True)).permute(2, 0, 1)
    return t.unsqueeze(0).float().div_(255.0)


def tensor_to_frame(x: Tensor) -> np.ndarray:
    """1x3xHxW float -> HxWx3 uint8 (rounded, clamped; NaN-safe)."""
    x = torch.nan_to_num(x.detach().float().cpu()[0], nan=0.0).clamp_(0.0, 1.0)
    return x.mul_(255.0).add_(0.5).floor_().to(torch.uint8).permute(1, 2, 0).numpy().copy()


def _pad(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    m = 1 << PAD_LOG2
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        # replicate needs a pad smaller than the input for "reflect" only; replicate works always
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


@dataclass
class LayerCodecRunner:
    """One loaded package: its model's coding path (``compress`` / ``synthesize``, tiled by
    ``tiling``) wrapped in layers, and the checks that a layer is this model's."""

    package: ModelPackage
    device: torch.device
    tiling: Tiling = field(default_factory=Tiling)
    refine: Refinement | None = None  # encoder-side latent refinement (never for base layers)

    @property
    def model(self):
        return self.package.model

    @property
    def kind(self) -> LayerKind:
        return self.package.config.layer_kind

    def encode(self, x_pad: Tensor, size: tuple[int, int], *, parent: bytes = b"",
               reference: Tensor | None = None, frame_id: int = 0) -> tuple[bytes, Tensor]:
        """Padded frame -> (layer bytes, ŷ)."""
        cfg = self.package.config
        strings, y_hat = self.model.compress(x_pad, reference, tiling=self.tiling,
                                             refine=self.refine, size=size)
        header = LayerHeader(
            kind=self.kind, model_id=cfg.model_id, model_digest=self._digest16(),
            width=size[1], height=size[0], pad_log2=PAD_LOG2, n_slices=cfg.coded_slices,
            parent=parent if parent else bytes(16), frame_id=frame_id,
        )
        return pack_layer(Layer(header=header, substreams=tuple(strings))), y_hat

    def _digest16(self) -> bytes:
        return self.package.digest_bytes[:16]

    def parse(self, data: LayerInput) -> ParsedLayer:
        """Parse (bytes; a :class:`ParsedLayer` is not parsed again) and check that this
        model made the layer."""
        layer = parse_layer(data)
        h = layer.header
        cfg = self.package.config
        if h.kind != self.kind:
            raise ModelMismatchError(f"layer is a {h.kind.label} layer, model "
                                     f"{cfg.model_id!r} decodes {self.kind.label} layers")
        if h.model_digest != self._digest16():
            raise ModelMismatchError(
                f"layer was coded by model {h.model_id!r} ({h.model_digest.hex()[:12]}), not by "
                f"the loaded {cfg.model_id!r} ({self.package.digest[:12]}): load the weights "
                "that produced it")
        if h.n_slices != cfg.coded_slices or h.pad_log2 != PAD_LOG2:
            raise ModelMismatchError("layer geometry does not match the model configuration")
        return layer

    def decode_latents(self, layers: Sequence[Layer]) -> Tensor:
        """ŷ of frames of one padded size, decoded as one batch."""
        h = layers[0].header
        size = (h.padded_height, h.padded_width)
        return self.model.decompress_latent([list(lay.substreams) for lay in layers], size,
                                            self.device)

    def synthesize(self, y_hat: Tensor, reference: Tensor | None = None) -> Tensor:
        return self.model.synthesize(y_hat, reference, tiling=self.tiling)


class ScalableCodec:
    """Base (machine) codec with an optional enhancement (or residual) codec on top of it."""

    def __init__(self, base: ModelPackage, enhancement: ModelPackage | None = None,
                 device: str | torch.device = "cpu", *, tiling: Tiling | None = None,
                 refine: Refinement | None = None) -> None:
        """``tiling``: how frames run through the transforms (default: whole up to
        2560 x 1600 pixels, tiles beyond); decoding the latents is exact either way.
        ``refine``: the encoder refines the latents of the layers that code the human image
        (a single-layer codec's, an enhancement or residual layer's; never a base layer's,
        whose objective needs the edge mask; ``steps=0`` is the plain encoder). Decoding is
        unchanged."""
        self.device = torch.device(device)
        self.tiling = tiling if tiling is not None else Tiling()
        if base.config.needs_base:
            raise ValueError(f"first package must be a base (or single) codec, "
                             f"got {base.config.kind!r}")
        if refine is not None and not refine.steps:
            refine = None
        self.refine = refine
        single = base.config.layer_kind is LayerKind.SINGLE
        self.base = LayerCodecRunner(base, self.device, self.tiling,
                                     self._refinement(refine, base) if single else None)
        self.enhancement = None
        if enhancement is not None:
            if not enhancement.config.needs_base:
                raise ValueError("second package must be an enhancement or residual codec")
            if enhancement.config.base_digest and enhancement.config.base_digest != base.digest:
                raise ModelMismatchError(
                    f"enhancement model {enhancement.config.model_id!r} was trained on another "
                    f"base model ({enhancement.config.base_digest[:12]}), not "
                    f"{base.config.model_id!r} ({base.digest[:12]})")
            self.enhancement = LayerCodecRunner(enhancement, self.device, self.tiling,
                                                self._refinement(refine, enhancement))

    @staticmethod
    def _refinement(refine: Refinement | None, package: ModelPackage) -> Refinement | None:
        if refine is not None:
            refine.objective_lambda(package.model)  # no λ: a clear error now, not per frame
        return refine

    @classmethod
    def load(cls, base_path: str | Path, enhancement_path: str | Path | None = None,
             device: str | torch.device = "cpu", *, refine: Refinement | None = None
             ) -> ScalableCodec:
        base = load_package(base_path, device)
        enh = load_package(enhancement_path, device) if enhancement_path else None
        return cls(base, enh, device, refine=refine)

    # -- edge ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_base(self, frame: np.ndarray | object, frame_id: int = 0) -> bytes:
        x = frame_to_tensor(frame).to(self.device)
        data, _ = self.base.encode(_pad(x), tuple(x.shape[-2:]), frame_id=frame_id)
        return data

    @torch.no_grad()
    def encode_enhancement(self, frame: np.ndarray | object, base_layer: LayerInput) -> bytes:
        """Enhancement layer of ``frame``, bound to the exact ``base_layer`` bytes."""
        enh = self._need_enhancement()
        base = self.base.parse(base_layer)
        x = frame_to_tensor(frame).to(self.device)
        if (base.header.height, base.header.width) != tuple(x.shape[-2:]):
            raise LayerPairingError("frame size differs from the base layer's frame size")
        # the enhancement's analysis sees the frame alone: the base ŷ only joins at synthesis
        # (which a refining encoder runs too)
        needs = enh.model.analysis_uses_reference or enh.refine is not None
        reference = self._reference(enh, base) if needs else None
        data, _ = enh.encode(_pad(x), tuple(x.shape[-2:]), parent=base.digest,
                             reference=reference, frame_id=base.header.frame_id)
        return data

    # -- cloud ---------------------------------------------------------------------------------
    def _need_enhancement(self) -> LayerCodecRunner:
        if self.enhancement is None:
            raise ValueError("no enhancement model loaded")
        return self.enhancement

    def _reference(self, enh: LayerCodecRunner, base: Layer) -> Tensor | None:
        """What ``enh`` needs from ``base`` (models.base_reference), from its exact ŷ."""
        return base_reference(enh.kind, self.base.decode_latents([base]), self.base.synthesize)

    @staticmethod
    def _crop(x: Tensor, header: LayerHeader) -> np.ndarray:
        return tensor_to_frame(x[..., : header.height, : header.width])

    @torch.no_grad()
    def decode_machine(self, base_layer: LayerInput) -> np.ndarray:
        return self.decode_machine_batch([base_layer])[0]

    @torch.no_grad()
    def decode_machine_batch(self, base_layers: Sequence[LayerInput]) -> list[np.ndarray]:
        """Decode many base layers; frames of one size share one batch (GPU throughput)."""
        layers = [self.base.parse(b) for b in base_layers]
        out: list[np.ndarray | None] = [None] * len(layers)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, lay in enumerate(layers):
            groups.setdefault((lay.header.padded_height, lay.header.padded_width), []).append(i)
        for idx in groups.values():
            y_hat = self.base.decode_latents([layers[i] for i in idx])
            if self.device.type == "cuda":
                # GPU throughput: one synthesis for the batch (pixels may differ from a
                # frame decoded alone by float rounding; ŷ never does)
                xs = self.base.synthesize(y_hat)
                for j, i in enumerate(idx):
                    out[i] = self._crop(xs[j : j + 1], layers[i].header)
                continue
            for j, i in enumerate(idx):
                # CPU: per-frame synthesis, so batch composition never changes a pixel
                x = self.base.synthesize(y_hat[j : j + 1])
                out[i] = self._crop(x, layers[i].header)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def decode_human(self, base_layer: LayerInput, enhancement_layer: LayerInput
                     ) -> np.ndarray:
        enh = self._need_enhancement()
        base = self.base.parse(base_layer)
        layer = enh.parse(enhancement_layer)
        if layer.header.parent != base.digest:
            raise LayerPairingError(
                "enhancement layer belongs to another base layer "
                f"({layer.header.parent.hex()[:12]}), not this one "
                f"({base.digest.hex()[:12]})")
        if (layer.header.width, layer.header.height) != (base.header.width, base.header.height):
            raise LayerPairingError("enhancement and base layers have different frame sizes")
        reference = self._reference(enh, base)
        x = enh.synthesize(enh.decode_latents([layer]), reference)
        return self._crop(x, base.header)

    def layer_bpp(self, data: LayerInput) -> float:
        """Bits per pixel of a layer, from its real size (container overhead included)."""
        if isinstance(data, ParsedLayer):
            h, n = data.header, len(data.data)
        else:
            h, n = read_header(data), len(data)
        return 8.0 * n / (h.width * h.height)
