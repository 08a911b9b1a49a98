"""The learned codecs under evaluation: model packages (a base layer, or a layer with the base
it refines) that turn images into real layer containers and back.

Rates are ``len(layer)`` of the containers the codec library writes (base + enhancement for the
human image), never an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvalError
from .points import Coded, LayerCoded, RatePoint

__all__ = ["Learned", "human_points", "installed_enhancements", "load_bases", "load_layered",
           "machine_points", "package_lambda", "unique_labels"]


def package_lambda(pkg: Any) -> float:
    """The rate-distortion λ a package was trained at (its record), NaN when it has none."""
    try:
        return float(pkg.config.meta.get("lambda", math.nan))
    except (TypeError, ValueError):
        return math.nan


def unique_labels(labels: list[str]) -> list[str]:
    """``labels`` with repeats numbered: ``a, a#2, a#3``."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


@dataclass
class Learned:
    """A package ready to code images: a base (or single-layer) package alone, or a layer
    (enhancement, residual) on top of its base."""

    path: Path
    package: Any  # icm_codec.ModelPackage
    codec: Any  # icm_codec.ScalableCodec
    base_path: Path | None = None
    base: Any = None  # the base package of a dependent layer

    @property
    def kind(self) -> str:
        return self.package.config.kind

    @property
    def lmbda(self) -> float:
        return package_lambda(self.package)

    def layers(self, image: np.ndarray) -> LayerCoded:
        """Code one image: the base layer alone gives the machine image; with a layer on top,
        the human image."""
        b = self.codec.encode_base(image)
        if self.codec.enhancement is None:
            return LayerCoded(len(b), 0, self.codec.decode_machine(b))
        e = self.codec.encode_enhancement(image, b)
        return LayerCoded(len(b), len(e), self.codec.decode_human(b, e))

    def run(self, images: Sequence[np.ndarray]) -> list[Coded]:
        """Code many images (machine images decode as one batch)."""
        if self.codec.enhancement is None:
            layers = [self.codec.encode_base(img) for img in images]
            decoded = self.codec.decode_machine_batch(layers)
            return [Coded(len(b), d) for b, d in zip(layers, decoded, strict=True)]
        return [Coded(c.base_nbytes + c.layer_nbytes, c.image) for c in map(self.layers, images)]

    def point(self, codec: str, label: str, params: dict[str, Any]) -> RatePoint:
        return RatePoint(codec, label, self.run, params, layers=self.layers)


def load_bases(paths: Sequence[str | Path], device: str = "cpu",
               kinds: Sequence[str] = ("base", "single"), refine: Any = None) -> list[Learned]:
    """Packages that code an image on their own (base layers; single-layer codecs).
    ``refine``: an ``icm_codec.Refinement`` for the single-layer codecs' encoder."""
    from icm_codec import ScalableCodec, load_package

    out = []
    for p in paths:
        pkg = load_package(p, device)
        if pkg.config.kind not in kinds:
            raise EvalError(f"{p} is a {pkg.config.kind!r} package, not a base layer")
        out.append(Learned(Path(p), pkg, ScalableCodec(pkg, None, device, refine=refine)))
    return out


def load_layered(paths: Sequence[str | Path], bases: Sequence[Learned],
                 device: str = "cpu", refine: Any = None) -> list[Learned]:
    """Enhancement / residual packages, each on the one of ``bases`` it refines (by digest).
    ``refine``: an ``icm_codec.Refinement`` for the layer's encoder."""
    from icm_codec import ScalableCodec, load_package

    by_digest = {b.package.digest: b for b in bases}
    out = []
    for p in paths:
        pkg = load_package(p, device)
        if not pkg.config.needs_base:
            raise EvalError(f"{p} is a {pkg.config.kind!r} package, not an "
                            "enhancement (or residual) layer")
        base = by_digest.get(pkg.config.base_digest)
        if base is None:
            raise EvalError(f"{p} refines a base package that is not among --base "
                            f"(digest {pkg.config.base_digest[:12]}): add it to --base")
        out.append(Learned(Path(p), pkg, ScalableCodec(base.package, pkg, device, refine=refine),
                           base.path, base.package))
    return out


def installed_enhancements(bases: Sequence[str | Path]) -> list[Path]:
    """Installed enhancement / residual packages whose base layer is among ``bases``."""
    from icm_codec import LayerKind, load_package
    from icm_codec.registry import list_packages

    digests = {load_package(b).digest for b in bases}
    out = []
    for info in list_packages():
        if LayerKind.parse(info.kind).needs_parent:
            cfg = load_package(info.path).config
            if cfg.base_digest in digests:
                out.append(info.path)
    return out


# -- the rate points of `icm eval-machine` ----------------------------------------------------
def machine_points(bases: Sequence[str | Path], device: str = "cpu") -> list[RatePoint]:
    """The base layer at each rate point (package): machine image from the base layer alone."""
    learned = load_bases(bases, device, kinds=("base",))
    labels = unique_labels([b.package.config.model_id for b in learned])
    return [b.point("base", label, {
        "package": str(path), "model_id": b.package.config.model_id,
        "digest": b.package.digest[:16], "base_digest": b.package.digest, "lambda": b.lmbda,
        "trained": b.package.config.meta.get("trained")})
        for path, b, label in zip(bases, learned, labels, strict=True)]


def human_points(enhancements: Sequence[str | Path], bases: Sequence[str | Path],
                 device: str = "cpu") -> list[RatePoint]:
    """The human image: base + enhancement layers (bits of both), paired by base digest."""
    layered = load_layered(enhancements, load_bases(bases, device), device)
    labels = unique_labels([f"{e.package.config.model_id} m={e.package.config.m}"
                            if e.kind == "enhancement" else e.package.config.model_id
                            for e in layered])
    # the difference-compression baseline is another method: its own curve
    return [e.point("human" if e.kind == "enhancement" else "human-dc", label, {
        "package": str(path), "base": str(e.base_path), "base_digest": e.base.digest,
        "kind": e.kind, "m": e.package.config.m, "lambda": e.lmbda,
        "trained": e.package.config.meta.get("trained")})
        for path, e, label in zip(enhancements, layered, labels, strict=True)]
