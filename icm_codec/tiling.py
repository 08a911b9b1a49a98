"""Run a convolutional transform tile by tile to bound memory on large frames.

Transforms have a finite receptive field, so tiles that overlap by a halo and are cropped back
reproduce the whole-frame result up to float rounding. Frames up to ``max_pixels`` run whole
(the path the models were trained on); larger ones run in tiles of ``tile`` output-side units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_MAX_PIXELS", "Tiling", "run_tiled"]

DEFAULT_MAX_PIXELS = 2560 * 1600  # image pixels handled in one piece


def run_tiled(module: nn.Module, x: Tensor, scale: float, *, tile: int = 64, halo: int = 4,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """``module(x)`` where the output is ``scale`` times the input size.

    ``tile`` and ``halo`` count positions on the latent side (1/16 of the image).
    """
    h, w = x.shape[-2:]
    image_pixels = h * w if scale < 1 else h * w * scale * scale
    if image_pixels <= max_pixels:
        return module(x)
    inv = round(1 / scale) if scale < 1 else 1
    up = round(scale) if scale >= 1 else 1
    # latent-side geometry
    lh, lw = (h // inv, w // inv) if scale < 1 else (h, w)
    out = None
    for r0 in range(0, lh, tile):
        for c0 in range(0, lw, tile):
            r1, c1 = min(r0 + tile, lh), min(c0 + tile, lw)
            a0, a1 = max(0, r0 - halo), min(lh, r1 + halo)
            b0, b1 = max(0, c0 - halo), min(lw, c1 + halo)
            piece = x[..., a0 * inv : a1 * inv, b0 * inv : b1 * inv]
            y = module(piece)
            if out is None:
                out = torch.empty((*y.shape[:2], round(h * scale), round(w * scale)),
                                  dtype=y.dtype, device=y.device)
            s = up  # output units per latent position
            out[..., r0 * s : r1 * s, c0 * s : c1 * s] = y[
                ..., (r0 - a0) * s : (r1 - a0) * s, (c0 - b0) * s : (c1 - b0) * s]
    assert out is not None
    return out


@dataclass(frozen=True)
class Tiling:
    """The tiling option of a model's coding path (``LayerCodec.compress`` / ``synthesize``):
    whole frames up to ``max_pixels`` image pixels, tiles of ``tile`` latent positions (with a
    ``halo`` of context) beyond."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    tile: int = 64
    halo: int = 4

    def run(self, module: nn.Module, x: Tensor, scale: float) -> Tensor:
        return run_tiled(module, x, scale, tile=self.tile, halo=self.halo,
                         max_pixels=self.max_pixels)
