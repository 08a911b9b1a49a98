"""A package scored by its own training objective on held-out photos, with real bytes: how
``icm plan`` decides whether a new package replaces the shipped one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LayerScore", "heldout_images", "score_package"]


def heldout_images(data: Sequence[str | Path], size: int = 512, limit: int = 24
                   ) -> list[tuple[str, np.ndarray]]:
    """The training data's held-out photos (the split ``icm train`` validates on; never video
    frames, never Kodak), centre-cropped to at most ``size`` pixels a side, a multiple of 16."""
    from .data import VIDEO_EXTS, load_dataset

    _, val = load_dataset(list(data), progress=False)
    out = []
    for s in val:
        if Path(s.key.split("#", 1)[0]).suffix.lower() in VIDEO_EXTS:
            continue
        h, w = s.image.shape[:2]
        hh, ww = min(size, h) // 16 * 16, min(size, w) // 16 * 16
        r, c = (h - hh) // 2, (w - ww) // 2
        out.append((Path(s.key).name, np.ascontiguousarray(s.image[r : r + hh, c : c + ww])))
    if not out:
        raise ValueError("the training data holds no held-out photos")
    return out[:limit]


@dataclass
class LayerScore:
    """A package scored with real bytes on a set of images, by its own training objective."""

    bpp: float  # the package's own layer
    total_bpp: float  # with its base layer, for dependent layers
    psnr: float  # of the image the package is trained for (machine for base, human otherwise)
    psnr_mask: float  # inside the SA-ICM edge mask (the base's objective)
    objective: float  # bpp + λ·255²·mse (mse inside the mask for a base), the training loss


def score_package(path: Path, images: Sequence[tuple[str, np.ndarray]],
                  base: Path | None = None, lmbda: float | None = None) -> LayerScore:
    """Encode and decode every image with real bitstreams; ``lmbda`` defaults to the
    package's own (so two packages of one λ compare by the loss they were trained on)."""
    from ..api import ScalableCodec
    from ..package import load_package
    from .masks import edge_mask

    pkg = load_package(path)
    lam = float(lmbda if lmbda is not None else pkg.config.meta.get("lambda", math.nan))
    if pkg.config.needs_base:
        if base is None:
            raise ValueError(f"{path} is a {pkg.config.kind} layer: pass its base package")
        codec = ScalableCodec(load_package(base), pkg)
    else:
        codec = ScalableCodec(pkg)
    rows = []
    for _, img in images:
        px = img.shape[0] * img.shape[1]
        b = codec.encode_base(img)
        if codec.enhancement is not None:
            e = codec.encode_enhancement(img, b)
            own, total, dec = len(e), len(b) + len(e), codec.decode_human(b, e)
        else:
            own = total = len(b)
            dec = codec.decode_machine(b)
        err = ((dec.astype(np.float64) - img.astype(np.float64)) / 255.0) ** 2
        mask = edge_mask(img) if pkg.config.kind == "base" else np.ones(img.shape[:2], bool)
        mse_mask = float((err * mask[..., None]).mean())  # the loss's normalisation
        mse_in = float(err[mask].mean())
        rows.append((8 * own / px, 8 * total / px, float(err.mean()), mse_in,
                     8 * own / px + lam * 255**2 * mse_mask))
    a = np.array(rows)
    return LayerScore(float(a[:, 0].mean()), float(a[:, 1].mean()),
                      float(np.mean([10 * math.log10(1 / max(v, 1e-12)) for v in a[:, 2]])),
                      float(np.mean([10 * math.log10(1 / max(v, 1e-12)) for v in a[:, 3]])),
                      float(a[:, 4].mean()))
