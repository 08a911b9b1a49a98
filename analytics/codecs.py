"""Rate points of the benchmark: each turns an image into real bytes and back.

Bits per pixel always come from bytes that were really produced: the layer containers of our
codecs (``len(layer)``; base + enhancement for the human image) and in-memory JPEG / WebP /
AVIF files written by Pillow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AnalyticsError

__all__ = ["CLASSICAL", "DEFAULT_QUALITIES", "RatePoint", "classical_points",
           "human_points", "installed_enhancements", "machine_points", "parse_qualities"]

# Pillow format and options: 4:2:0 JPEG, WebP method 4, AVIF (libaom) speed 6 — the settings of
# the anchor figures in ../shared/ENVIRONMENT.md and of `icm eval-rd`.
CLASSICAL: dict[str, tuple[str, dict[str, Any]]] = {
    "JPEG": ("JPEG", {"subsampling": 2}),
    "WebP": ("WEBP", {"method": 4}),
    "AVIF": ("AVIF", {"speed": 6}),
}
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {
    "JPEG": (5, 10, 20, 30, 40, 50, 60, 75, 90),
    "WebP": (2, 5, 10, 20, 30, 50, 70, 90),
    "AVIF": (5, 15, 25, 35, 50, 65, 80),
}

Coded = tuple[int, np.ndarray]  # (bytes, decoded HxWx3 uint8)


@dataclass
class RatePoint:
    """One operating point of one codec: ``run(images) -> [(n_bytes, decoded), ...]``."""

    codec: str  # "JPEG", "WebP", "AVIF", "base", "human", "human-dc" (residual layer)
    label: str  # "q50", a model id
    run: Callable[[Sequence[np.ndarray]], list[Coded]] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)


def parse_qualities(items: Iterable[str] | None) -> dict[str, tuple[int, ...]]:
    """``["JPEG=10,50", "AVIF="]`` -> sweeps (an empty list drops that codec); defaults else."""
    out = dict(DEFAULT_QUALITIES)
    lookup = {k.lower(): k for k in CLASSICAL}
    for item in items or ():
        name, sep, values = item.partition("=")
        key = lookup.get(name.strip().lower())
        if not sep or key is None:
            raise AnalyticsError(f"--qualities takes CODEC=q1,q2,... with CODEC one of "
                                 f"{', '.join(CLASSICAL)}; got {item!r}")
        try:
            qs = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError as e:
            raise AnalyticsError(f"--qualities {item!r}: qualities must be integers") from e
        if any(not 0 <= q <= 100 for q in qs):
            raise AnalyticsError(f"--qualities {item!r}: qualities must lie in 0..100")
        out[key] = qs
    return {k: v for k, v in out.items() if v}


def _pillow_run(fmt: str, opts: dict[str, Any], quality: int):
    from PIL import Image

    def run(images: Sequence[np.ndarray]) -> list[Coded]:
        out = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=fmt, quality=quality, **opts)
            data = buf.getvalue()
            with Image.open(io.BytesIO(data)) as im:
                out.append((len(data), np.asarray(im.convert("RGB"))))
        return out

    return run


def classical_points(qualities: dict[str, Sequence[int]]) -> list[RatePoint]:
    """JPEG / WebP / AVIF at each quality of the sweeps (Pillow, in memory)."""
    from PIL import features

    points = []
    for name, qs in qualities.items():
        fmt, opts = CLASSICAL[name]
        if name == "AVIF" and not features.check("avif"):
            raise AnalyticsError("this Pillow has no AVIF support: install Pillow >= 11.2 "
                                 "or drop AVIF with --qualities AVIF=")
        points += [RatePoint(name, f"q{q}", _pillow_run(fmt, opts, q), {"quality": q})
                   for q in qs]
    return points


def _lambda(pkg: Any) -> float:
    try:
        return float(pkg.config.meta.get("lambda", math.nan))
    except (TypeError, ValueError):
        return math.nan


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def machine_points(bases: Sequence[str | Path], device: str = "cpu") -> list[RatePoint]:
    """The base layer at each rate point (package): machine image from the base layer alone."""
    from icm_codec import ScalableCodec, load_package

    points = []
    pkgs = [load_package(p, device) for p in bases]
    labels = _unique([pkg.config.model_id for pkg in pkgs])
    for path, pkg, label in zip(bases, pkgs, labels, strict=True):
        if pkg.config.kind != "base":
            raise AnalyticsError(f"{path} is a {pkg.config.kind!r} package, not a base layer")
        codec = ScalableCodec(pkg, None, device)

        def run(images: Sequence[np.ndarray], codec: ScalableCodec = codec) -> list[Coded]:
            layers = [codec.encode_base(img) for img in images]
            decoded = codec.decode_machine_batch(layers)
            return [(len(b), d) for b, d in zip(layers, decoded, strict=True)]

        points.append(RatePoint("base", label, run, {
            "package": str(path), "model_id": pkg.config.model_id, "digest": pkg.digest[:16],
            "base_digest": pkg.digest, "lambda": _lambda(pkg),
            "trained": pkg.config.meta.get("trained")}))
    return points


def installed_enhancements(bases: Sequence[str | Path]) -> list[Path]:
    """Installed enhancement / residual packages whose base layer is among ``bases``."""
    from icm_codec import load_package
    from icm_codec.registry import list_packages

    digests = {load_package(b).digest for b in bases}
    out = []
    for info in list_packages():
        if info.kind in ("enhancement", "residual"):
            cfg = load_package(info.path).config
            if cfg.base_digest in digests:
                out.append(info.path)
    return out


def human_points(enhancements: Sequence[str | Path], bases: Sequence[str | Path],
                 device: str = "cpu") -> list[RatePoint]:
    """The human image: base + enhancement layers (bits of both), paired by base digest."""
    from icm_codec import ScalableCodec, load_package

    by_digest = {}
    for b in bases:
        pkg = load_package(b, device)
        by_digest[pkg.digest] = (b, pkg)
    points = []
    enh_pkgs = [load_package(p, device) for p in enhancements]
    labels = _unique([f"{e.config.model_id} m={e.config.m}" if e.config.kind == "enhancement"
                      else e.config.model_id for e in enh_pkgs])
    for path, enh, label in zip(enhancements, enh_pkgs, labels, strict=True):
        if not enh.config.needs_base:
            raise AnalyticsError(f"{path} is a {enh.config.kind!r} package, not an "
                                 "enhancement (or residual) layer")
        if enh.config.base_digest not in by_digest:
            raise AnalyticsError(f"{path} refines a base package that is not among --base "
                                 f"(digest {enh.config.base_digest[:12]}): add it to --base")
        base_path, base_pkg = by_digest[enh.config.base_digest]
        codec = ScalableCodec(base_pkg, enh, device)

        def run(images: Sequence[np.ndarray], codec: ScalableCodec = codec) -> list[Coded]:
            out = []
            for img in images:
                b = codec.encode_base(img)
                e = codec.encode_enhancement(img, b)
                out.append((len(b) + len(e), codec.decode_human(b, e)))
            return out

        # the difference-compression baseline is another method: its own curve
        codec_name = "human" if enh.config.kind == "enhancement" else "human-dc"
        points.append(RatePoint(codec_name, label, run, {
            "package": str(path), "base": str(base_path), "base_digest": base_pkg.digest,
            "kind": enh.config.kind,
            "m": enh.config.m, "lambda": _lambda(enh),
            "trained": enh.config.meta.get("trained")}))
    return points
