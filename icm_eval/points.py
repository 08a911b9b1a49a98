"""The two point types of every evaluation.

:class:`RatePoint` is an operating point of a codec: a JPEG quality, a learned package (with its
base). It turns images into real bytes and back. :class:`RDPoint` is what a point measured on a
set of images: mean bits per pixel and quality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Coded", "LayerCoded", "RDPoint", "RatePoint", "mean_point"]


class Coded(NamedTuple):
    """One image through one codec: every byte its decoder needed, and the decoded image."""

    nbytes: int
    image: np.ndarray  # HxWx3 uint8 RGB


class LayerCoded(NamedTuple):
    """One image through a layered codec: the base layer's bytes and the own bytes of the layer
    on top of it (0 for a codec of one layer), and the decoded image."""

    base_nbytes: int
    layer_nbytes: int
    image: np.ndarray


@dataclass
class RatePoint:
    """One operating point of one codec: ``run(images) -> [Coded, ...]`` (real bytes).

    ``layers``, for learned codecs, codes one image and keeps the layers' bytes apart (what the
    human view costs once the base layer is paid for).
    """

    codec: str  # "JPEG", "WebP", "AVIF", "base", "human", "human-dc" (residual layer), ...
    label: str  # "q50", a model id
    run: Callable[[Sequence[np.ndarray]], list[Coded]] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    layers: Callable[[np.ndarray], LayerCoded] | None = field(default=None, repr=False)


@dataclass
class RDPoint:
    label: str  # e.g. "q50", "λ=0.013 m=4"
    bpp: float
    psnr: float
    ms_ssim: float
    extra: dict = field(default_factory=dict)


def mean_point(label: str, rows: list[tuple[float, float, float]], **extra) -> RDPoint:
    """The mean of per-image ``(bpp, psnr, ms_ssim)`` rows (MS-SSIM: of those that have one)."""
    arr = np.array(rows, dtype=np.float64)
    return RDPoint(label, float(arr[:, 0].mean()), float(arr[:, 1].mean()),
                   float(np.nanmean(arr[:, 2])) if not np.isnan(arr[:, 2]).all() else math.nan,
                   extra)
