"""Labelled evaluation sets: a YOLO dataset folder (COCO8) whose label files are the ground truth.

Unlabelled sets (sampled video frames, photo folders) come from :mod:`icm_eval.data`; they are
scored against pseudo-ground-truth (each model on the original images).
"""

from __future__ import annotations

from pathlib import Path

from icm_eval.data import EvalImage, EvalSet, evenly, fit, image_files, read_image

from .errors import AnalyticsError
from .metrics import load_yolo_labels

__all__ = ["load_labelled"]


def load_labelled(folder: str | Path, n: int | None, names: dict[int, str] | None = None,
                  max_side: int | None = None, name: str = "coco8",
                  split: str | None = None) -> EvalSet:
    """A YOLO dataset folder (``images/...`` with ``labels/...`` beside it, as in COCO8).

    ``split`` (``train``, ``val``) takes only ``images/<split>``: training on one split and
    evaluating on another keeps the two apart. Labels are normalised, so shrinking an image
    keeps them valid.
    """
    root = Path(folder)
    img_root, label_root = root / "images", root / "labels"
    if not img_root.is_dir() or not label_root.is_dir():
        raise AnalyticsError(f"{root} is not a YOLO dataset: it needs images/ and labels/")
    if split:
        img_root, label_root = img_root / split, label_root / split
        if not img_root.is_dir():
            raise AnalyticsError(f"{root} has no split {split!r} (no images/{split}/)")
    files = image_files(img_root)
    picked = [files[i] for i in evenly(len(files), n)]
    images = []
    for f in picked:
        img = fit(read_image(f), max_side)
        label = label_root / f.relative_to(img_root).with_suffix(".txt")
        gt = load_yolo_labels(label, img.shape[:2], names, f.name)
        images.append(EvalImage(f.name, img, gt))
    return EvalSet(name, images, str(root))
