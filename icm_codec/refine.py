"""Encoder-side latent refinement: spend encoder time to code a better latent for the same decoder.

The analysis transform g_a is an amortised guess at the latent that minimises the training
objective R + λ·D; on one given image a few steps of gradient descent on y itself find a latent
with a lower objective (Campos et al., "Content adaptive optimization for neural image
compression", CVPR-W 2019; Yang et al., "Improving inference for neural image compression",
NeurIPS 2020). The refined y is then coded by the ordinary exact coder, so the bitstream, the
decoder and its exactness do not change: only the encoder is slower.

Each step runs the coder's training-mode rate (additive noise, so the rate has a gradient; the
noise is seeded, so a frame always gives the same bytes) and the synthesis of the
straight-through ŷ, and moves y with Adam under a cosine-decayed step size.
The objective is the layer's own human-image loss, R + λ·mse(x, x̂) over the frame's pixels
(padding excluded), with λ from the package's training record. Base layers are not refined: their
objective is the edge-masked distortion of SA-ICM, whose mask the encoder does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

from .kinds import LayerKind
from .losses import bpp_of

if TYPE_CHECKING:
    from .models import LayerCodec
    from .tiling import Tiling

__all__ = ["DEFAULT_REFINE_MAX_PIXELS", "Refinement"]

# refinement keeps g_s's activations for the backward pass: ~0.8 GB per megapixel (float32)
DEFAULT_REFINE_MAX_PIXELS = 1920 * 1088


@dataclass(frozen=True)
class Refinement:
    """How hard the encoder works on each latent.

    ``steps``: gradient steps per frame (0: the plain encoder); ``lr``: Adam's initial step size
    (in latent units; decays to 0 over the steps); ``lmbda``: the λ of the objective (default:
    the package's training λ); ``max_pixels``: larger frames are refused (memory);
    ``progress``: a progress bar per frame (command-line use); ``seed``: of the rate's noise,
    so a frame always refines to the same latent and the same bytes.
    """

    steps: int = 50
    lr: float = 1e-2
    lmbda: float | None = None
    max_pixels: int = DEFAULT_REFINE_MAX_PIXELS
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"refinement step size must be a positive number, got {self.lr}")
        if self.lmbda is not None and not (self.lmbda > 0 and math.isfinite(self.lmbda)):
            raise ValueError(f"refinement λ must be a positive number, got {self.lmbda}")

    def objective_lambda(self, model: LayerCodec) -> float:
        """λ of the objective: the given one, else the package's training λ."""
        if self.lmbda is not None:
            return self.lmbda
        lmbda = model.config.meta.get("lambda")
        try:
            value = float(lmbda)
        except (TypeError, ValueError):
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"package {model.config.model_id!r} records no training λ: give "
                             "the refinement's λ explicitly")
        return value

    def check(self, model: LayerCodec, x: Tensor) -> None:
        """Clear errors before any work: the kind can be refined and the frame fits."""
        if model.kind is LayerKind.BASE:
            raise ValueError("base layers are not refined: their objective is the edge-masked "
                             "distortion, and the encoder has no mask")
        pixels = x.shape[-2] * x.shape[-1]
        if pixels > self.max_pixels:
            raise ValueError(f"frame of {pixels} pixels is over the refinement limit of "
                             f"{self.max_pixels} (memory): code it without refinement")

    def run(self, model: LayerCodec, x: Tensor, y: Tensor, reference: Tensor | None,
            size: tuple[int, int] | None = None, tiling: Tiling | None = None) -> Tensor:
        """The refined latent of the padded frame ``x`` (1, 3, H, W), starting from ``y``.

        ``size``: the frame's real (height, width) inside the padding; the distortion counts
        only those pixels. Gradients are taken with respect to y alone (``autograd.grad``), so
        the shared model's parameters and their ``.grad`` are never touched, and the model's
        train/eval mode is not switched: concurrent encoders may share one model.
        """
        if self.steps == 0:
            return y
        self.check(model, x)
        lmbda = self.objective_lambda(model) * 255.0**2
        h, w = size if size is not None else x.shape[-2:]
        target = x[..., :h, :w]
        num_pixels = x.shape[-2] * x.shape[-1]
        # the noisy rate draws from torch's global generator (inside CompressAI): seed it for
        # this frame and give the caller's state back, so encodes are reproducible
        devices = [y.device.index or 0] if y.is_cuda else []
        with torch.enable_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            y = y.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([y], lr=self.lr)
            for step in tqdm(range(self.steps), desc=f"refine {model.config.model_id}",
                             disable=not self.progress, leave=False):
                for group in opt.param_groups:
                    group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
                out = model.coder(y, noisy=True)
                x_hat = model.synthesize(out["y_hat"], reference, tiling=tiling)
                mse = (x_hat[..., :h, :w] - target).pow(2).mean()
                loss = bpp_of(out["likelihoods"], num_pixels) + lmbda * mse
                (grad,) = torch.autograd.grad(loss, [y])
                y.grad = grad
                opt.step()
        return y.detach()
