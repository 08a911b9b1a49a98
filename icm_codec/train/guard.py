"""Roll a training run back when it diverges.

GDN codecs fine-tuned at a high peak rate can blow up part-way through a run: in session 13
both round-5 trunks (lr 2e-4) fell from ~28.9 dB to 21.4 dB on validation around step 1,850
and were still below their start 4,000 steps later, so the whole run was lost. The gradient
clip does not stop it (the blow-up builds over a few hundred clipped steps). The guard keeps
the state of the last healthy validation in memory (the trainer validates once before its
first step, so the state a run starts or resumes from counts); a validation objective well
above the best so far restores it and halves the peak rate for the rest of the run. (A base
resumed at step 1,290 at lr 3e-4 blew up before its first validation in session 13, when the
guard had no baseline yet.)
"""

from __future__ import annotations

import copy
import math
from typing import Any, Protocol

__all__ = ["DivergenceGuard", "validation_objective"]


class _Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


def validation_objective(row: dict[str, float], lmbda: float, masked: bool) -> float:
    """The run's objective on the validation crops, bpp + λ·255²·mse (the mse inside the
    loss mask for a masked base), from a validation row of ``metrics.csv``."""
    p = row.get("val_psnr_mask", math.nan) if masked else math.nan
    if math.isnan(p):  # no mask pixel in the validation crops: the whole image
        p = row["val_psnr"]
    return row["val_bpp"] + lmbda * 255**2 * 10 ** (-p / 10)


class DivergenceGuard:
    """Snapshots ``parts`` (model, optimizers, weight average) at each healthy validation.

    :meth:`check` says whether a validation objective is a divergence: more than
    ``tolerance`` (a share) above the best seen in this process. Then :meth:`restore` puts the
    snapshot back. ``tolerance`` 0 turns the guard off.
    """

    def __init__(self, parts: dict[str, _Stateful], tolerance: float = 0.2) -> None:
        if tolerance < 0:
            raise ValueError(f"divergence tolerance must be >= 0, got {tolerance}")
        self.parts = parts
        self.tolerance = tolerance
        self.best = math.inf
        self.snapshot: dict[str, dict] | None = None
        self.snapshot_step = 0
        self.rollbacks = 0

    def check(self, objective: float, step: int) -> bool:
        """True when ``objective`` is a divergence with a snapshot to go back to; otherwise
        record this state as the latest healthy one."""
        if not self.tolerance:
            return False
        bad = not math.isfinite(objective) or objective > self.best * (1 + self.tolerance)
        if bad and self.snapshot is not None:
            return True
        if not bad:
            self.best = min(self.best, objective)
            self.snapshot = {k: copy.deepcopy(p.state_dict()) for k, p in self.parts.items()}
            self.snapshot_step = step
        return False

    def restore(self) -> int:
        """Load the last healthy state into every part; returns the step it was taken at."""
        assert self.snapshot is not None, "restore() without a snapshot"
        for k, p in self.parts.items():
            p.load_state_dict(copy.deepcopy(self.snapshot[k]))
        self.rollbacks += 1
        return self.snapshot_step
