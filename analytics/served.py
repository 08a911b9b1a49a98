"""The cloud's detector slots: stock weights, and adapted weights per base model.

A slot (``yolo11n``) answers for every frame. Frames whose base layer was coded by a package
that has an adapted detector (its record names the package's digest, and it was adapted from
the slot's exact stock weights) are analysed with the adapted weights; the rest with the stock
ones. Results keep the slot's name, so queries by model are unchanged, and carry
:class:`~analytics.results.WeightsInfo` naming the weights that actually ran::

    slot = ServedDetector.build(stock, find_adapted(), device="cpu", conf=0.25)
    results = slot.detect(frames, base_digests=[header.model_digest for header in headers])
    results[0].weights      # WeightsInfo(id="yolo11n-on-base-lite-l0.013", adapted=True, ...)

Frames are grouped by the weights that serve them, so one batch may run several models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .adapted import AdaptedDetector
from .detector import Detector
from .errors import AnalyticsError
from .results import FrameResult, WeightsInfo

__all__ = ["ServedDetector"]

log = logging.getLogger("icm.analytics")
_KEY_HEX = 32  # a layer header carries the first 16 bytes of its package's digest


def _key(digest: str | bytes) -> str:
    return (digest.hex() if isinstance(digest, bytes) else str(digest).lower())[:_KEY_HEX]


class ServedDetector:
    """One detector slot: ``stock`` plus ``adapted[digest prefix] = Detector``.

    ``routes_by_base`` tells the ingest pipeline to pass each frame's base digest.
    """

    routes_by_base = True

    def __init__(self, stock: Detector, adapted: dict[str, Detector] | None = None,
                 bases: dict[str, str] | None = None) -> None:
        self.stock = stock
        self.adapted = {_key(k): v for k, v in (adapted or {}).items()}
        self.base_names = {_key(k): v for k, v in (bases or {}).items()}
        for d in self.adapted.values():
            if d.names != stock.names or d.task != stock.task:
                raise AnalyticsError(f"adapted detector {d.weights_info.id} does not fit slot "
                                     f"{stock.name}: another task or other class names")

    @classmethod
    def build(cls, stock: Detector, candidates: Sequence[AdaptedDetector],
              **detector_kwargs: Any) -> ServedDetector:
        """The slot of ``stock`` with every candidate adapted from its exact weights.

        Candidates come in search order: for a base digest already served, a later one is
        logged as shadowed. One adapted from other weights of the same name is logged and left
        out (the stock weights were replaced; serving the adaptation of others would surprise).
        """
        adapted: dict[str, Detector] = {}
        bases: dict[str, str] = {}
        for ad in candidates:
            rec = ad.record
            if rec.source_name != stock.name:
                continue
            if str(rec.source.get("sha256", "")).lower() != stock.weights_info.sha256:
                log.warning("adapted detector %s was adapted from other %s weights (sha256 "
                            "%s, this cloud runs %s): not used", rec.id, stock.name,
                            str(rec.source.get("sha256", ""))[:12],
                            stock.weights_info.sha256[:12])
                continue
            det = None
            for b in rec.bases:
                k = _key(str(b["digest"]))
                if k in adapted:
                    log.warning("adapted detector %s for base %s is shadowed by %s", rec.id,
                                b.get("model_id", k[:12]), adapted[k].weights_info.id)
                    continue
                if det is None:
                    det = Detector(ad.weights, name=stock.name, weights_id=rec.id, adapted=True,
                                   **detector_kwargs)
                adapted[k] = det
                bases[k] = str(b.get("model_id", k[:12]))
        return cls(stock, adapted, bases)

    @property
    def name(self) -> str:
        return self.stock.name

    @property
    def task(self) -> str:
        return self.stock.task

    @property
    def names(self) -> dict[int, str]:
        return self.stock.names

    def routes(self) -> list[tuple[str, str]]:
        """``(base model, weights id)`` for every base with adapted weights."""
        return [(self.base_names.get(k, k[:12]), d.weights_info.id)
                for k, d in self.adapted.items()]

    def describe(self) -> str:
        routes = ", ".join(f"{b} -> {w}" for b, w in self.routes())
        return f"{self.name}: stock {self.stock.weights_info.sha256[:12]}" + (
            f"; adapted: {routes}" if routes else "; no adapted weights")

    def weights_for(self, base_digest: str | bytes | None) -> WeightsInfo:
        det = self.adapted.get(_key(base_digest)) if base_digest else None
        return (det or self.stock).weights_info

    def detect(self, frames: Sequence[np.ndarray], *,
               base_digests: Sequence[str | bytes | None] | None = None,
               **kwargs: Any) -> list[FrameResult]:
        """Results per frame, each from the weights that serve its base digest."""
        if base_digests is None:
            return self.stock.detect(frames, **kwargs)
        if len(base_digests) != len(frames):
            raise AnalyticsError("base_digests must have one entry per frame")
        groups: dict[int, tuple[Detector, list[int]]] = {}
        for i, dg in enumerate(base_digests):
            det = (self.adapted.get(_key(dg)) if dg else None) or self.stock
            groups.setdefault(id(det), (det, []))[1].append(i)
        out: list[FrameResult | None] = [None] * len(frames)
        frame_ids = kwargs.pop("frame_ids", None)
        for det, idx in groups.values():
            res = det.detect([frames[i] for i in idx], **kwargs,
                             **({"frame_ids": [frame_ids[i] for i in idx]}
                                if frame_ids is not None else {}))
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]
