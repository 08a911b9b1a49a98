"""The layer kind: the one enum every part of the library (and its commands) names kinds by.

Its integer value is the ``kind`` byte of a layer's header (``docs/bitstream.md``), its
:attr:`~LayerKind.label` the ``kind`` string of a package's config, of the model registry and of
the commands. :meth:`LayerKind.parse` reads either spelling, plus the aliases of
:data:`KIND_ALIASES` (``dc``: the difference-compression baseline, i.e. ``residual``).
"""

from __future__ import annotations

import enum

__all__ = ["HUMAN_LAYER_KINDS", "KIND_ALIASES", "LayerKind"]


class LayerKind(enum.IntEnum):
    """What a layer codes, and therefore whether it needs a base layer to decode."""

    BASE = 0  # machine layer (SA-ICM base codec), decodable alone
    ENHANCEMENT = 1  # feature-fusion enhancement layer; needs its base layer
    RESIDUAL = 2  # difference-compression baseline: codes x - x_machine; needs its base layer
    SINGLE = 3  # single-layer codec straight to a human image

    @property
    def label(self) -> str:
        """The kind as configs, the registry and the commands spell it: ``base`` …"""
        return self.name.lower()

    @property
    def needs_parent(self) -> bool:
        """True for kinds that refine a base layer (and so name it in ``parent``)."""
        return self in (LayerKind.ENHANCEMENT, LayerKind.RESIDUAL)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """Every spelling :meth:`parse` accepts: the labels, then the aliases (for argparse)."""
        return (*(k.label for k in cls), *KIND_ALIASES)

    @classmethod
    def parse(cls, value: LayerKind | str) -> LayerKind:
        """A kind from a label or an alias (any case); ``ValueError`` naming the choices."""
        if isinstance(value, LayerKind):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            if key in KIND_ALIASES:
                return KIND_ALIASES[key]
            for kind in cls:
                if kind.label == key:
                    return kind
        names = ", ".join(k.label for k in cls)
        aliases = ", ".join(f"{a} = {k.label}" for a, k in KIND_ALIASES.items())
        raise ValueError(f"unknown layer kind {value!r}: expected one of {names} ({aliases})")


KIND_ALIASES: dict[str, LayerKind] = {"dc": LayerKind.RESIDUAL}

#: What the enhancement (human) layer of a frame may be coded with: every kind that refines a
#: base (feature fusion, or difference compression); either decodes the human image.
HUMAN_LAYER_KINDS: tuple[LayerKind, ...] = tuple(k for k in LayerKind if k.needs_parent)
