"""The optimisation step shared by the trainer (``icm train``), the tests and the CUDA check.

Three parts a codec needs beyond a plain Adam loop, each here once:

- :func:`refit_density`: the entropy bottleneck's density (the prior of z) learns at the main
  rate during training, where its wide initial density stays far from the data for thousands of
  steps (z then costs far more than its entropy); before export it is fitted to the z of the
  training data with everything else frozen, so the packaged z costs about its entropy. Fitting
  it quickly *during* training instead (a 10x rate) collapsed the hyperprior: a sharp prior
  pulls z to zero before the model has learnt to use it (z std 0.2, 0.004 of 0.17 bpp, σ
  constant over the frame after 3,300 steps).
- :class:`LRSchedule`: warm-up, a plateau at the peak and a decay over the last steps, all in
  steps (not fractions of a run), saved in the checkpoint so a resumed run keeps its schedule.
- :class:`WeightEMA`: an exponential moving average of the weights, which is what validation
  and export use (smoother than the last step's weights, and free).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from .losses import rate_distortion_loss
from .models import LayerCodec

__all__ = ["DENSITY_LR_SCALE", "LRSchedule", "WeightEMA", "fit_steps", "make_optimizers",
           "random_crops", "refit_density", "train_step", "z_rate_weight"]

DENSITY_LR_SCALE = 1.0  # z density during training, times the main rate (see the module doc)


def _is_density(name: str) -> bool:
    return ".entropy_bottleneck." in f".{name}" and not name.endswith(".quantiles")


def make_optimizers(model: LayerCodec, lr: float = 1e-4, aux_lr: float = 1e-3, *,
                    density_lr_scale: float = DENSITY_LR_SCALE
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Main optimizer (two groups: transforms and contexts at ``lr``; the z density at
    ``lr × density_lr_scale``) and the auxiliary one for the entropy-bottleneck quantiles.

    Each main group carries ``lr_scale``: :func:`set_lr` multiplies the scheduled rate by it.
    """
    main, density, aux = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".quantiles"):
            aux.append(p)
        elif _is_density(name):
            density.append(p)
        else:
            main.append(p)
    groups = [{"params": main, "lr": lr, "lr_scale": 1.0}]
    if density:
        groups.append({"params": density, "lr": lr * density_lr_scale,
                       "lr_scale": density_lr_scale})
    return torch.optim.Adam(groups, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


@dataclass
class LRSchedule:
    """Learning rate by step: linear warm-up to ``peak``, plateau, then a cosine decay to
    ``peak × final_ratio`` over the steps ``[end − decay, end)``; the final rate after ``end``.

    It is stored in the checkpoint; :meth:`extended` lengthens a run without changing the rate
    of any step already taken.
    """

    peak: float = 3e-4
    warmup: int = 500
    end: int = 20000
    decay: int = 4000
    final_ratio: float = 0.02

    def __post_init__(self) -> None:
        if self.peak <= 0 or self.warmup < 0 or self.end < 1 or self.decay < 0:
            raise ValueError(f"invalid learning-rate schedule {self}")
        if not 0 < self.final_ratio <= 1:
            raise ValueError("final_ratio must lie in (0, 1]")
        self.decay = min(self.decay, self.end)

    @property
    def decay_start(self) -> int:
        return self.end - self.decay

    def __call__(self, step: int) -> float:
        lr = self.peak
        if self.warmup and step < self.warmup:
            lr *= (step + 1) / self.warmup
        if step >= self.decay_start:
            t = min(1.0, (step - self.decay_start) / max(1, self.decay))
            lr *= self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return lr

    def extended(self, end: int, step: int) -> LRSchedule:
        """The schedule of a run asked to end at ``end`` when ``step`` steps are done.

        Before the decay has begun the plateau grows (or shrinks) so the decay ends at ``end``;
        once it has begun the schedule stays as it is, and steps past its end run at the final
        rate: the rate of a step already taken never changes, and never jumps back up.
        """
        if end != self.end and step <= min(self.decay_start, end - self.decay):
            return replace(self, end=end)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> LRSchedule:
        return LRSchedule(**d)


def z_rate_weight(step: int, ramp: int) -> float:
    """Weight of z's rate in the loss at ``step``: 0 → 1 linearly over the first ``ramp``
    steps (1 throughout when ``ramp`` is 0).

    A hyperprior whose z shrank to the median (the rounded z of almost every position is 0)
    gets no gradient that pays for carrying information again: any spread costs z-rate at once
    and helps y only once it survives the quantisation noise. Free z early in a run is meant
    to let it spread first; the full price returns by the end of the ramp. Measured: a ramp
    does not revive a trunk that has already collapsed (docs/training.md); from scratch it is
    untested.
    """
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


class WeightEMA:
    """Exponential moving average of a model's floating-point parameters.

    The decay ramps up from ~0.5 (``(1 + n) / (10 + n)`` after n updates) to ``decay``, so a
    fresh or warm-started run is not dragged towards its initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()
                       if p.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1 - d)

    @contextmanager
    @torch.no_grad()
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back after."""
        params = dict(model.named_parameters())
        saved = {k: params[k].detach().clone() for k in self.shadow}
        for k, v in self.shadow.items():
            params[k].copy_(v)
        try:
            yield
        finally:
            for k, v in saved.items():
                params[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k].copy_(v)


@torch.enable_grad()
def refit_density(model: LayerCodec, zs: list[Tensor], steps: int = 400, lr: float = 3e-3,
                  seed: int = 0) -> tuple[float, float]:
    """Fit the z density (and its quantiles) of ``model`` to the latents ``zs`` (outputs of its
    h_a on training crops) with every other weight untouched; returns z's bits per symbol
    before and after, on ``zs``."""
    eb = model.coder.entropy_bottleneck
    density = [p for n, p in eb.named_parameters() if n != "quantiles"]
    opt = torch.optim.Adam(density, lr=lr)
    aux_opt = torch.optim.Adam([eb.quantiles], lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    was_training = eb.training

    def bits() -> float:
        eb.eval()
        with torch.no_grad():
            total = sum(float(-torch.log2(eb(z)[1]).sum()) for z in zs)
        return total / sum(z.numel() for z in zs)

    before = bits()
    eb.train()
    for _ in range(steps):
        z = zs[int(torch.randint(len(zs), (1,), generator=gen))]
        loss = -torch.log2(eb(z)[1]).sum() / z.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        aux = eb.loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
    after = bits()
    eb.train(was_training)
    return before, after


def train_step(model: LayerCodec, opt: torch.optim.Optimizer, aux_opt: torch.optim.Optimizer,
               x: Tensor, lmbda: float, *, reference: Tensor | None = None,
               mask: Tensor | None = None, clip: float = 1.0, z_weight: float = 1.0
               ) -> dict[str, Tensor]:
    """One rate-distortion step and one auxiliary (quantile) step; returns the loss terms
    (detached) with ``aux``. ``z_weight``: see :func:`rate_distortion_loss`."""
    out = model(x, reference)
    terms = rate_distortion_loss(out, x, lmbda, mask, z_weight)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    aux = model.aux_loss()
    aux_opt.zero_grad(set_to_none=True)
    aux.backward()
    aux_opt.step()
    return {k: v.detach() for k, v in terms.items()} | {"aux": aux.detach()}


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
              clip: float = 1.0, warmup: int = 0,
              density_lr_scale: float = DENSITY_LR_SCALE) -> list[float]:
    """Run ``steps`` rate-distortion steps (linear warm-up, then a constant rate); returns the
    loss history.

    ``reference`` maps a batch to what a dependent layer needs from the frozen base.
    """
    gen = torch.Generator().manual_seed(seed)
    opt, aux_opt = make_optimizers(model, lr, density_lr_scale=density_lr_scale)
    schedule = LRSchedule(lr, warmup, max(1, steps), 0)
    model.train()
    history = []
    for step in range(steps):
        set_lr(opt, schedule(step))
        x = random_crops(images, batch, crop, gen)
        ref = None
        if reference is not None:
            with torch.no_grad():
                ref = reference(x)
        terms = train_step(model, opt, aux_opt, x, lmbda, reference=ref, clip=clip)
        history.append(float(terms["loss"]))
    model.eval()
    return history
