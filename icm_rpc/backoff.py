"""Exponential backoff with jitter for reconnecting edges: each delay is half the current cap
plus a random half, so thousands of cameras do not reconnect in lock-step after a cloud restart."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * self.factor ** self.attempt)
        self.attempt += 1
        return self.rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
