"""Codec configuration: a small dataclass saved (as JSON) inside every model package."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .kinds import LayerKind

__all__ = ["ARCHS", "KINDS", "CodecConfig"]

_ADDED_LATER = {"spatial_context": False}  # field -> the value older packages mean

KINDS = tuple(k.label for k in LayerKind)
ARCHS = ("lite", "gdn", "tcm")


@dataclass
class CodecConfig:
    """Architecture of one codec of the family.

    Args:
        kind: ``base`` (SA-ICM machine layer), ``enhancement`` (feature-fusion human layer),
            ``residual`` (difference-compression baseline) or ``single`` (one-layer codec).
        arch: ``lite`` (edge-first CNN), ``gdn`` (the same with GDN / inverse GDN) or ``tcm``
            (mixed Swin-transformer/CNN blocks).
        N: transform width.
        M: channels of the base latent ŷ (n_slices x slice width).
        n_slices: slices n of the base latent (the paper: 5 of 64 channels).
        m: slices coded by the enhancement layer (1 <= m <= n_slices); ignored by other kinds.
        hyper_channels, feature_channels, context_channels: entropy-model widths.
        spatial_context: each slice coded in two checkerboard passes, the second conditioned
            on the first (:mod:`icm_codec.latent`); older packages have none.
        model_id: stable name written into every bitstream (e.g. ``base-lite-q2``).
        base_digest: for enhancement/residual codecs, digest of the base package they refine.
        meta: free-form training record (data, steps, lambda, mask, wall time, device).
    """

    kind: str = "base"
    arch: str = "lite"
    N: int = 128
    M: int = 320
    n_slices: int = 5
    m: int = 4
    hyper_channels: int = 128
    feature_channels: int = 192
    context_channels: int = 64
    spatial_context: bool = False
    model_id: str = ""
    base_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = LayerKind.parse(self.kind).label  # the label, never an alias or enum
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHS}")
        if self.n_slices < 1 or self.M % self.n_slices:
            raise ValueError(f"M={self.M} must split into n_slices={self.n_slices} equal slices")
        if not 1 <= self.m <= self.n_slices:
            raise ValueError(f"m={self.m} must lie in 1..n_slices={self.n_slices}")
        if not self.model_id:
            self.model_id = f"{self.kind}-{self.arch}"
        mid = self.model_id
        if not mid.isascii() or not mid.isprintable() or len(mid) > 64:
            raise ValueError("model_id must be printable ASCII of at most 64 characters")

    @property
    def layer_kind(self) -> LayerKind:
        return LayerKind.parse(self.kind)

    @property
    def slice_channels(self) -> int:
        return self.M // self.n_slices

    @property
    def coded_slices(self) -> int:
        """Slices this codec's own layer carries."""
        return self.m if self.layer_kind is LayerKind.ENHANCEMENT else self.n_slices

    @property
    def needs_base(self) -> bool:
        return self.layer_kind.needs_parent

    def to_json(self) -> str:
        """The JSON saved in packages (and hashed into their digest). Fields added later are
        written only when they differ from their default, so older packages keep their
        digest, which every bitstream carries as the model's identity."""
        d = dataclasses.asdict(self)
        for name, default in _ADDED_LATER.items():
            if d[name] == default:
                del d[name]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)
