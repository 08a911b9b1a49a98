"""Evaluation images: a folder of test images (Kodak), sampled video frames, photo folders.

Video frames and photos have no labels; a labelled set (``analytics``: YOLO label files) puts its
ground truth on each :class:`EvalImage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvalError

__all__ = ["IMAGE_SUFFIXES", "EvalImage", "EvalSet", "evenly", "fit", "image_files",
           "load_images", "load_photos", "parse_frame_range", "read_image", "sample_video"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class EvalImage:
    key: str
    image: np.ndarray  # HxWx3 uint8 RGB
    labels: Any = None  # ground truth of a labelled set (an analytics FrameResult)


@dataclass
class EvalSet:
    """A named set of images; ``labelled`` sets are scored against their labels."""

    name: str
    images: list[EvalImage] = field(default_factory=list)
    source: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.images) and all(im.labels is not None for im in self.images)

    @property
    def reference(self) -> str:
        return "labels" if self.labelled else "pseudo-ground-truth"


def evenly(n_total: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them for None or 0)."""
    if n is None or n <= 0 or n >= n_total:
        return list(range(n_total))
    return sorted({round(i * (n_total - 1) / max(n - 1, 1)) for i in range(n)})


def fit(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink so the long side is at most ``max_side`` (Lanczos); small images stay as they are."""
    if not max_side or max(img.shape[:2]) <= max_side:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS))


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise EvalError(f"cannot read image {path}: {e}") from e


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files of ``folder`` (and its subfolders), sorted by path."""
    if not folder.is_dir():
        raise EvalError(f"image folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EvalError(f"no images in {folder}")
    return files


def load_images(folder: str | Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The first ``limit`` (all: None) images of ``folder`` (not its subfolders) in name order,
    as (file name, image): the test set of ``icm eval-rd``."""
    return [(p.name, read_image(p)) for p in image_files(Path(folder), recursive=False)[:limit]]


def parse_frame_range(text: str | None) -> tuple[int, int | None] | None:
    """``"715:"`` / ``"0:665"`` / ``":100"`` -> (start, end or None); None or "" -> None."""
    if not text:
        return None
    a, sep, b = text.partition(":")
    try:
        start, end = int(a) if a.strip() else 0, int(b) if b.strip() else None
    except ValueError:
        start, end, sep = -1, None, ""
    if not sep or start < 0 or (end is not None and end <= start):
        raise EvalError(f"frame range must be START:END frame indices (END exclusive, "
                        f"either may be left out), got {text!r}")
    return start, end


def sample_video(path: str | Path, n: int | None, max_side: int | None = None,
                 name: str | None = None,
                 frame_range: tuple[int, int | None] | None = None) -> EvalSet:
    """``n`` frames spread evenly over the whole video (all frames if ``n`` is None).

    ``frame_range`` (start, end exclusive; end None = to the last frame) restricts the sampling
    to part of the clip, e.g. the part a codec was not trained on. Frames are read in order
    rather than seeked to: seeking in MPEG-4 AVI lands on key frames.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise EvalError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not cap.isOpened() or total <= 0:
            raise EvalError(f"cannot read video {p} (OpenCV opened no frames)")
        start, end = frame_range if frame_range is not None else (0, None)
        end = total if end is None else min(end, total)
        if start >= end:
            raise EvalError(f"frame range {start}:{end} is empty: {p} has {total} frames")
        wanted = {start + i for i in evenly(end - start, n)}
        images = []
        for i in range(max(wanted) + 1):
            if not cap.grab():
                break
            if i in wanted:
                ok, bgr = cap.retrieve()
                if ok:
                    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                    images.append(EvalImage(f"{p.stem}#{i}", fit(rgb, max_side)))
    finally:
        cap.release()
    if not images:
        raise EvalError(f"no frames could be decoded from {p}")
    if name is None:
        name = p.stem if frame_range is None else f"{p.stem}@{start}-{end}"
    return EvalSet(name, images, str(p))


def load_photos(folder: str | Path, n: int | None, max_side: int | None = None,
                name: str = "photos") -> EvalSet:
    """``n`` photos spread evenly over the sorted folder (searched recursively)."""
    files = image_files(Path(folder))
    picked = [files[i] for i in evenly(len(files), n)]
    images = [EvalImage(f.name, fit(read_image(f), max_side)) for f in picked]
    return EvalSet(name, images, str(folder))
