"""Minimal optimisation loop shared by tests and the training CLI.

The full trainer (data sets, masks, checkpoints, schedules) builds on :func:`fit_steps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .losses import rate_distortion_loss
from .models import LayerCodec

__all__ = ["fit_steps", "make_optimizers", "random_crops"]


def make_optimizers(model: LayerCodec, lr: float = 1e-4, aux_lr: float = 1e-3
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Main optimizer for everything but the entropy-bottleneck quantiles, aux for those."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else main).append(p)
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def random_crops(images: list[Tensor], batch: int, crop: int, gen: torch.Generator) -> Tensor:
    """A batch of random ``crop``-square crops (images are 3xHxW floats, at least crop big)."""
    out = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = img.shape[-2:]
        r = int(torch.randint(h - crop + 1, (1,), generator=gen))
        c = int(torch.randint(w - crop + 1, (1,), generator=gen))
        out.append(img[:, r : r + crop, c : c + crop])
    return torch.stack(out)


def fit_steps(model: LayerCodec, images: list[Tensor], steps: int, lmbda: float, *,
              crop: int = 64, batch: int = 4, lr: float = 1e-4, seed: int = 0,
              reference: Callable[[Tensor], Tensor] | None = None,
              clip: float = 1.0) -> list[float]:
    """Run ``steps`` rate-distortion steps; returns the loss history.

    ``reference`` maps a batch to what a dependent layer needs from the frozen base.
    """
    gen = torch.Generator().manual_seed(seed)
    opt, aux_opt = make_optimizers(model, lr)
    model.train()
    history = []
    for _ in range(steps):
        x = random_crops(images, batch, crop, gen)
        ref = None
        if reference is not None:
            with torch.no_grad():
                ref = reference(x)
        out = model(x, ref)
        terms = rate_distortion_loss(out, x, lmbda)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        model.aux_loss().backward()
        aux_opt.step()
        history.append(float(terms["loss"].detach()))
    model.eval()
    return history
