"""The codec family: one contract (forward / compress / decompress) for every kind.

::

    base         x ──g_a──► y ─[coder, n slices]─► ŷ ──g_machine──► x̂_machine
    enhancement  x ──g_a──► ya ─[coder, m slices]─► ŷa
                 ŷf_k = ŷ_k + ŷa_k (k <= m), ŷ_k (k > m) ──g_human──► x̂_human
    residual     x − x̂_machine ──g_a──► yr ─[coder]─► ŷr ──g_s──► r̂;  x̂_human = x̂_machine + r̂
    single       x ──g_a──► y ─[coder]─► ŷ ──g_s──► x̂

SA-ICM (base) trains with L = R(y) + R(z) + λ·mse(x⊙m, x̂⊙m) for an edge mask m; the enhancement
layer is trained on a frozen base with L = R(ya) + R(za) + λ·mse(x, x̂_human).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CodecConfig
from .kinds import LayerKind
from .latent import ChannelConditionalCoder
from .refine import Refinement
from .tiling import Tiling
from .transforms import analysis, synthesis

__all__ = ["LayerCodec", "base_reference", "create_model"]


def base_reference(kind: LayerKind | str, y_base: Tensor,
                   machine_image: Callable[[Tensor], Tensor]) -> Tensor | None:
    """What a layer of ``kind`` needs from its base layer, given the base layer's ŷ: ŷ itself
    (enhancement: fused into its own latent), the machine image ``machine_image(ŷ)`` clamped
    to [0, 1] as every image is (residual: the layer codes the difference), nothing (base,
    single).

    The one rule for the encoder, the decoder and training; the caller says how ŷ and the
    image are computed (the exact integer decoder or the differentiable coder, tiled or not).
    """
    kind = LayerKind.parse(kind)
    if kind is LayerKind.ENHANCEMENT:
        return y_base
    if kind is LayerKind.RESIDUAL:
        return machine_image(y_base).clamp(0.0, 1.0)
    return None


def _run(module: nn.Module, x: Tensor, scale: float, tiling: Tiling | None) -> Tensor:
    return module(x) if tiling is None else tiling.run(module, x, scale)


class LayerCodec(nn.Module):
    """One layer of the scalable codec (or a baseline), by ``config.kind``.

    ``reference`` below is what a dependent layer needs from its base layer: the base ŷ for
    ``enhancement``, the machine image x̂_machine for ``residual``, nothing otherwise.
    """

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        coded = config.coded_slices * config.slice_channels
        self.g_a = analysis(config.arch, config.N, coded)
        self.coder = ChannelConditionalCoder(
            coded, config.coded_slices, config.hyper_channels, config.feature_channels,
            config.context_channels, config.spatial_context,
        )
        synth_in = config.M if config.layer_kind is LayerKind.ENHANCEMENT else coded
        self.g_s = synthesis(config.arch, config.N, synth_in)

    @property
    def kind(self) -> LayerKind:
        return self.config.layer_kind

    @property
    def analysis_uses_reference(self) -> bool:
        """Whether g_a sees the base layer's output (residual), not the frame alone."""
        return self.kind is LayerKind.RESIDUAL

    # -- the dataflow shared by training and coding ------------------------------------------
    def analysis_input(self, x: Tensor, reference: Tensor | None) -> Tensor:
        if self.analysis_uses_reference:
            return x - self._need(reference)
        return x

    def synthesis_latent(self, y_hat: Tensor, reference: Tensor | None = None) -> Tensor:
        """What g_s sees: ŷf_k = ŷ_k + ŷa_k for k <= m (enhancement), else the layer's own ŷ."""
        if self.kind is LayerKind.ENHANCEMENT:
            base = self._need(reference)
            return base + F.pad(y_hat, (0, 0, 0, 0, 0, base.shape[1] - y_hat.shape[1]))
        return y_hat

    def synthesis_output(self, out: Tensor, reference: Tensor | None = None) -> Tensor:
        """g_s output -> image: the residual codec adds the machine image back."""
        if self.kind is LayerKind.RESIDUAL:
            return self._need(reference) + out
        return out

    def synthesize(self, y_hat: Tensor, reference: Tensor | None = None, *,
                   tiling: Tiling | None = None) -> Tensor:
        """Latent -> image (unclamped); g_s in tiles when ``tiling`` says so (coding path)."""
        latent = self.synthesis_latent(y_hat, reference)
        return self.synthesis_output(_run(self.g_s, latent, 16, tiling), reference)

    def _need(self, reference: Tensor | None) -> Tensor:
        if reference is None:
            raise ValueError(f"a {self.kind.label} layer needs its base layer's output")
        return reference

    # -- training ----------------------------------------------------------------------------
    def forward(self, x: Tensor, reference: Tensor | None = None) -> dict:
        """Differentiable pass on a padded batch: x̂, ŷ and likelihoods of y and z."""
        y = self.g_a(self.analysis_input(x, reference))
        out = self.coder(y)
        out["x_hat"] = self.synthesize(out["y_hat"], reference)
        return out

    def aux_loss(self) -> Tensor:
        return self.coder.aux_loss()

    def freeze(self) -> None:
        """Compute integer weights and entropy tables; required before compress/decompress."""
        self.coder.freeze()

    # -- coding ------------------------------------------------------------------------------
    @torch.no_grad()
    def compress(self, x: Tensor, reference: Tensor | None = None, *,
                 tiling: Tiling | None = None, refine: Refinement | None = None,
                 size: tuple[int, int] | None = None) -> tuple[list[bytes], Tensor]:
        """Padded frame (1, 3, H, W) in [0, 1] -> substreams and the decoded latent ŷ; g_a in
        tiles when ``tiling`` says so. ``refine``: optimise the latent for this frame before
        coding it (encoder-side only; :mod:`icm_codec.refine`), counting the distortion on the
        frame's real ``size`` inside the padding."""
        y = _run(self.g_a, self.analysis_input(x, reference), 1 / 16, tiling)
        if refine is not None:
            y = refine.run(self, x, y, reference, size, tiling)
        return self.coder.compress(y)

    @torch.no_grad()
    def decompress_latent(self, strings: list[list[bytes]], padded_hw: tuple[int, int],
                          device: torch.device | str = "cpu") -> Tensor:
        h, w = padded_hw
        return self.coder.decompress(strings, (h // 16, w // 16), device)


def create_model(config: CodecConfig) -> LayerCodec:
    """The one factory for every kind and size."""
    return LayerCodec(config)
