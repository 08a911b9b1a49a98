"""Image quality and curve comparison: PSNR and MS-SSIM on 8-bit RGB, Bjøntegaard delta rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .points import RDPoint

__all__ = ["bd_rate", "ms_ssim", "psnr8"]


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on 8-bit RGB (pytorch-msssim); NaN for images under 161 pixels a side."""
    import torch
    from pytorch_msssim import ms_ssim as _ms

    if min(a.shape[:2]) < 161:
        return math.nan
    # float64 copies first: the images may be read-only views, which torch warns about sharing
    ta = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None]
    tb = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1)[None]
    return float(_ms(ta, tb, data_range=255.0))


def bd_rate(anchor: Sequence[RDPoint], test: Sequence[RDPoint],
            interpolation: str = "pchip",
            psnr_range: tuple[float, float] | None = None) -> float:
    """Bjøntegaard delta rate (%) of ``test`` against ``anchor`` over their common PSNR range,
    with monotone piecewise-cubic interpolation of log-rate over PSNR. Negative = fewer bits.
    Dominated points (more bits, no more PSNR than another point) are left out; NaN when a curve
    keeps fewer than two points or the curves share no PSNR range.

    ``interpolation="linear"`` joins the points with straight lines instead: the cross-check
    for curves of two or three points, where one point that adds little PSNR for many bits
    bends a cubic's neighbouring segment and moves the figure by points (docs/rd-report.md).

    ``psnr_range=(lo, hi)`` averages over that PSNR interval only (within the common range):
    the common range moves whenever a curve gains or loses an end point, and with it the
    figure (JPEG is far weaker at 26 dB than at 30), so two curves of different spans are
    compared fairly over one fixed interval."""
    from scipy.interpolate import PchipInterpolator

    if interpolation not in ("pchip", "linear"):
        raise ValueError(f"interpolation must be 'pchip' or 'linear', not {interpolation!r}")

    def curve(points: Sequence[RDPoint]) -> tuple[np.ndarray, np.ndarray]:
        # the Pareto front only: a point that costs more bits than another for no more PSNR
        # (an under-trained model can land there) would fold log-rate over PSNR back on itself
        kept: list[tuple[float, float]] = []
        for x in sorted(points, key=lambda x: (x.bpp, -x.psnr)):
            if not kept or x.psnr > kept[-1][0] + 1e-9:
                kept.append((x.psnr, math.log(x.bpp)))
        p, r = (np.array(v) for v in zip(*kept, strict=True)) if kept else (np.zeros(0),) * 2
        return p, r

    pa, ra = curve(anchor)
    pt, rt = curve(test)
    if len(pa) < 2 or len(pt) < 2:
        return math.nan
    lo, hi = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if psnr_range is not None:
        lo, hi = max(lo, psnr_range[0]), min(hi, psnr_range[1])
    if hi - lo < 1e-6:
        return math.nan
    grid = np.linspace(lo, hi, 200)
    if interpolation == "linear":
        fa, ft = np.interp(grid, pa, ra), np.interp(grid, pt, rt)
    else:
        fa, ft = PchipInterpolator(pa, ra)(grid), PchipInterpolator(pt, rt)(grid)
    return float((math.exp(np.trapz(ft - fa, grid) / (hi - lo)) - 1) * 100)
