"""The classical codecs every evaluation compares with: JPEG, WebP and AVIF through Pillow.

One table for ``icm eval-rd`` and ``icm eval-machine``: Pillow format and options (4:2:0 JPEG,
WebP method 4, AVIF (libaom) speed 6 — the settings of the anchor figures in
../shared/ENVIRONMENT.md) and each command's default quality sweep. Files are written in
memory; their real size is the rate.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import EvalError
from .points import Coded, RatePoint

__all__ = ["CLASSICAL", "DEFAULT_QUALITIES", "RD_QUALITIES", "ClassicalCodec",
           "classical_points", "code", "decode", "encode", "parse_qualities"]


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    format: str  # Pillow's format name
    options: Mapping[str, Any] = field(default_factory=dict)
    # `icm eval-rd`: the lowest qualities reach down to ~20-25 dB, where under-trained learned
    # codecs sit
    rd_qualities: tuple[int, ...] = ()
    # `icm eval-machine` (its default; --qualities overrides it)
    machine_qualities: tuple[int, ...] = ()


CLASSICAL: dict[str, ClassicalCodec] = {c.name: c for c in (
    ClassicalCodec("JPEG", "JPEG", {"subsampling": 2},
                   (1, 2, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   (5, 10, 20, 30, 40, 50, 60, 75, 90)),
    ClassicalCodec("WebP", "WEBP", {"method": 4},
                   (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   (2, 5, 10, 20, 30, 50, 70, 90)),
    ClassicalCodec("AVIF", "AVIF", {"speed": 6},
                   (0, 5, 15, 25, 35, 45, 55, 65, 75, 85, 92),
                   (5, 15, 25, 35, 50, 65, 80)),
)}
RD_QUALITIES: dict[str, tuple[int, ...]] = {k: c.rd_qualities for k, c in CLASSICAL.items()}
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {k: c.machine_qualities
                                                 for k, c in CLASSICAL.items()}


def encode(name: str, image: np.ndarray, quality: int) -> bytes:
    """``image`` (HxWx3 uint8 RGB) as a file of codec ``name`` at ``quality``, in memory."""
    from PIL import Image

    c = CLASSICAL[name]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=c.format, quality=quality, **c.options)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def code(name: str, image: np.ndarray, quality: int) -> Coded:
    """Encode and decode: the file's real size and the decoded image."""
    data = encode(name, image, quality)
    return Coded(len(data), decode(data))


def _run(name: str, quality: int):
    def run(images: Sequence[np.ndarray]) -> list[Coded]:
        return [code(name, img, quality) for img in images]

    return run


def classical_points(qualities: Mapping[str, Sequence[int]]) -> list[RatePoint]:
    """JPEG / WebP / AVIF at each quality of the sweeps (Pillow, in memory)."""
    from PIL import features

    points = []
    for name, qs in qualities.items():
        if name == "AVIF" and qs and not features.check("avif"):
            raise EvalError("this Pillow has no AVIF support: install Pillow >= 11.2 "
                            "or drop AVIF with --qualities AVIF=")
        points += [RatePoint(name, f"q{q}", _run(name, q), {"quality": q}) for q in qs]
    return points


def parse_qualities(items: Iterable[str] | None) -> dict[str, tuple[int, ...]]:
    """``["JPEG=10,50", "AVIF="]`` -> sweeps (an empty list drops that codec); defaults else."""
    out = dict(DEFAULT_QUALITIES)
    lookup = {k.lower(): k for k in CLASSICAL}
    for item in items or ():
        name, sep, values = item.partition("=")
        key = lookup.get(name.strip().lower())
        if not sep or key is None:
            raise EvalError(f"--qualities takes CODEC=q1,q2,... with CODEC one of "
                            f"{', '.join(CLASSICAL)}; got {item!r}")
        try:
            qs = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError as e:
            raise EvalError(f"--qualities {item!r}: qualities must be integers") from e
        if any(not 0 <= q <= 100 for q in qs):
            raise EvalError(f"--qualities {item!r}: qualities must lie in 0..100")
        out[key] = qs
    return {k: v for k, v in out.items() if v}
