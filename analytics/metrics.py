"""COCO-style mAP with pycocotools: box and mask, against labels or pseudo-ground-truth.

Ground truth and predictions are both lists of :class:`FrameResult`, one per image, aligned by
position. Ground truth comes from YOLO label files (:func:`load_yolo_labels`) or from a model on
the original frames (pseudo-ground-truth: its scores are ignored). The matcher is the reference
``COCOeval``: mAP@[.50:.95] over 10 IoU thresholds and mAP@.50, 101-point interpolation, at most
100 detections per image, averaged over the classes that have ground truth.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AnalyticsError
from .results import Detection, FrameResult

__all__ = ["IOU_TYPES", "MapResult", "coco_detections", "coco_ground_truth", "coco_map",
           "load_yolo_labels"]

IOU_TYPES = ("bbox", "segm")


@dataclass(frozen=True)
class MapResult:
    """mAP@[.50:.95] (``map``) and mAP@.50; NaN when no image has ground truth."""

    map: float
    map50: float
    n_images: int
    n_gt: int
    n_dt: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def load_yolo_labels(path: str | Path, image_size: tuple[int, int],
                     names: dict[int, str] | None = None,
                     frame_id: str | int | None = None) -> FrameResult:
    """A YOLO label file (``class cx cy w h``, normalised; optional polygon rows) as ground truth.

    A missing file means an image without objects (the YOLO convention).
    """
    h, w = image_size
    dets: list[Detection] = []
    p = Path(path)
    lines = p.read_text().splitlines() if p.is_file() else []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cid, vals = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError as e:
            raise AnalyticsError(f"{p}:{n}: not a YOLO label row: {line!r}") from e
        if len(vals) == 4:
            cx, cy, bw, bh = vals
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            poly = None
        elif len(vals) >= 6 and len(vals) % 2 == 0:  # segmentation row: x y x y ...
            xs, ys = np.array(vals[0::2]) * w, np.array(vals[1::2]) * h
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            poly = [np.stack([xs, ys], 1).reshape(-1).tolist()]
        else:
            raise AnalyticsError(f"{p}:{n}: expected 'class cx cy w h' or a polygon row")
        name = (names or {}).get(cid, str(cid))
        dets.append(Detection(cid, name, 1.0, box, poly))
    return FrameResult("ground-truth", (h, w), dets, frame_id, "labels")


def _rle(det: Detection, size: tuple[int, int]) -> dict[str, Any]:
    from .detector import polygons_to_rle

    if det.mask_rle is not None:
        return det.mask_rle
    if det.mask_polygons is None:
        raise AnalyticsError("mask mAP needs masks on every ground-truth and predicted object "
                             f"(a {det.class_name!r} has none): use a segmentation model")
    return polygons_to_rle(det.mask_polygons, *size)


def _keep(det: Detection, class_ids: set[int] | None) -> bool:
    return class_ids is None or det.class_id in class_ids


def coco_ground_truth(ground_truth: Sequence[FrameResult], iou_type: str = "bbox",
                      class_ids: Iterable[int] | None = None,
                      extra_classes: Iterable[int] = ()) -> dict[str, Any]:
    """The COCO dataset dict (images, annotations, categories) of ground-truth results."""
    from pycocotools import mask as mask_utils

    keep = set(class_ids) if class_ids is not None else None
    cats = {d.class_id: d.class_name for fr in ground_truth for d in fr.detections}
    for c in extra_classes:
        cats.setdefault(c, str(c))
    images, anns = [], []
    for i, fr in enumerate(ground_truth, 1):
        h, w = fr.image_size
        images.append({"id": i, "height": h, "width": w})
        for d in fr.detections:
            if not _keep(d, keep):
                continue
            x, y, bw, bh = d.box_xywh
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": d.class_id + 1,
                   "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0}
            if iou_type == "segm":
                rle = _rle(d, (h, w))
                ann["segmentation"] = rle
                ann["area"] = float(mask_utils.area(_bytes_rle(rle)))
            anns.append(ann)
    categories = [{"id": c + 1, "name": n} for c, n in sorted(cats.items())
                  if keep is None or c in keep]
    return {"images": images, "annotations": anns, "categories": categories}


def _bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    c = rle["counts"]
    return {"size": rle["size"], "counts": c.encode("ascii") if isinstance(c, str) else c}


def coco_detections(predictions: Sequence[FrameResult], iou_type: str = "bbox",
                    class_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """COCO result rows (``image_id`` = position + 1) of predicted results."""
    keep = set(class_ids) if class_ids is not None else None
    rows = []
    for i, fr in enumerate(predictions, 1):
        for d in fr.detections:
            if not _keep(d, keep):
                continue
            row = {"image_id": i, "category_id": d.class_id + 1, "score": float(d.score),
                   "bbox": list(d.box_xywh)}
            if iou_type == "segm":
                row["segmentation"] = _bytes_rle(_rle(d, fr.image_size))
                del row["bbox"]
            rows.append(row)
    return rows


def coco_map(ground_truth: Sequence[FrameResult], predictions: Sequence[FrameResult], *,
             iou_type: str = "bbox", class_ids: Iterable[int] | None = None) -> MapResult:
    """COCO mAP of ``predictions`` against ``ground_truth`` (aligned lists, one per image).

    ``class_ids`` restricts both sides to those classes (e.g. ``[0]`` for persons). No
    ground truth at all gives NaN; ground truth with no predictions gives 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise AnalyticsError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if len(ground_truth) != len(predictions):
        raise AnalyticsError(f"{len(ground_truth)} ground-truth frames but "
                             f"{len(predictions)} predicted frames")
    for g, p in zip(ground_truth, predictions, strict=True):
        if tuple(g.image_size) != tuple(p.image_size):
            raise AnalyticsError(f"frame {p.frame_id}: ground truth is {g.image_size}, "
                                 f"prediction {p.image_size} (h, w)")
    keep = sorted(set(class_ids)) if class_ids is not None else None
    dt_rows = coco_detections(predictions, iou_type, keep)
    gt = coco_ground_truth(ground_truth, iou_type, keep,
                           extra_classes={r["category_id"] - 1 for r in dt_rows})
    n_gt, n_img = len(gt["annotations"]), len(ground_truth)
    if n_gt == 0:
        return MapResult(math.nan, math.nan, n_img, 0, len(dt_rows))
    if not dt_rows:
        return MapResult(0.0, 0.0, n_img, n_gt, 0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_rows)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if keep is not None:
            ev.params.catIds = [c + 1 for c in keep]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats

    def clean(v: float) -> float:
        return math.nan if v < 0 else float(v)

    return MapResult(clean(stats[0]), clean(stats[1]), n_img, n_gt, len(dt_rows))
