"""Plain result objects the cloud passes on: no tensors, no Ultralytics types, JSON-ready.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the frame that was analysed. Masks are COCO-style
polygons (one flat ``[x0, y0, x1, y1, ...]`` list per part) and/or a COCO RLE
(``{"size": [h, w], "counts": str}``), also in frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Detection", "FrameResult", "WeightsInfo"]


@dataclass(frozen=True)
class Detection:
    """One object found in one frame.

    ``model`` names the detector that found it; empty inside a :class:`FrameResult` (whose
    ``model_name`` says it), set where detections of several models are pooled, as the cloud
    stores them.
    """

    class_id: int
    class_name: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask_polygons: list[list[float]] | None = None
    mask_rle: dict[str, Any] | None = None
    model: str = ""

    @property
    def box_xywh(self) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.box_xyxy
        return (x1, y1, x2 - x1, y2 - y1)

    @property
    def has_mask(self) -> bool:
        return self.mask_polygons is not None or self.mask_rle is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": round(float(self.score), 5),
            "box_xyxy": [round(float(v), 2) for v in self.box_xyxy],
        }
        if self.mask_polygons is not None:
            out["mask_polygons"] = [[round(float(v), 1) for v in p] for p in self.mask_polygons]
        if self.mask_rle is not None:
            out["mask_rle"] = dict(self.mask_rle)
        if self.model:
            out["model"] = self.model
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detection:
        box = [float(v) for v in d["box_xyxy"]]
        if len(box) != 4:
            raise ValueError(f"box_xyxy needs 4 numbers, got {len(box)}")
        x1, y1, x2, y2 = box
        return cls(int(d["class_id"]), str(d.get("class_name", "")), float(d["score"]),
                   (x1, y1, x2, y2), d.get("mask_polygons"), d.get("mask_rle"),
                   str(d.get("model", "")))

    def tagged(self, model: str) -> Detection:
        """This detection as the cloud keeps it: named by ``model`` and rounded as its JSON
        form is, so a live update and a later query of the stored frame give equal numbers."""
        return Detection.from_dict({**self.to_dict(), "model": model})


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights produced a result: the cloud stores it with each frame, so an analyst can
    tell frames analysed by a detector adapted to their base layer from the others."""

    id: str               # the stock detector's name, or the adapted detector's id
    sha256: str           # hex SHA-256 of the weights file
    adapted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.id, "sha256": self.sha256[:16], "adapted": self.adapted}


@dataclass
class FrameResult:
    """Everything one model found in one frame.

    ``image_size`` is ``(height, width)`` of the analysed frame; ``frame_id`` is whatever the
    caller uses to name the frame (an index, a camera timestamp, a file name).
    """

    model_name: str
    image_size: tuple[int, int]
    detections: list[Detection] = field(default_factory=list)
    frame_id: str | int | None = None
    task: str = "detect"
    weights: WeightsInfo | None = None

    def __len__(self) -> int:
        return len(self.detections)

    def count(self, class_name: str, min_score: float = 0.0) -> int:
        """How many detections of ``class_name`` score at least ``min_score``."""
        return sum(1 for d in self.detections if d.class_name == class_name
                   and d.score >= min_score)

    def filtered(self, min_score: float = 0.0,
                 class_ids: Sequence[int] | None = None) -> FrameResult:
        """A copy that keeps detections at or above ``min_score`` (and of ``class_ids``)."""
        keep = [d for d in self.detections if d.score >= min_score
                and (class_ids is None or d.class_id in class_ids)]
        return FrameResult(self.model_name, self.image_size, keep, self.frame_id, self.task,
                           self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "task": self.task,
            "frame_id": self.frame_id,
            "image_size": list(self.image_size),
            "detections": [d.to_dict() for d in self.detections],
            **({"weights": self.weights.to_dict()} if self.weights is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameResult:
        h, w = (int(v) for v in d["image_size"])
        w_d = d.get("weights")
        weights = (WeightsInfo(str(w_d["weights"]), str(w_d.get("sha256", "")),
                               bool(w_d.get("adapted", False))) if w_d else None)
        return cls(str(d["model_name"]), (h, w),
                   [Detection.from_dict(x) for x in d.get("detections", [])],
                   d.get("frame_id"), str(d.get("task", "detect")), weights)
