"""Training material: image folders, video files (split by time) and optional annotations.

Decoded frames are cached in memory (downscaled so the longer side is at most ``max_side``), so
sampling crops costs a numpy slice and never starves two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "Sample", "load_dataset"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_EXTS = {".avi", ".mp4", ".mkv", ".mov", ".webm"}


@dataclass
class Sample:
    """One training image with the object regions known for it (if any)."""

    key: str  # stable id: file path (+ frame index for video)
    image: np.ndarray  # HxWx3 uint8 RGB
    polygons: list[np.ndarray] = field(default_factory=list)  # Nx2 pixel coordinates


def _resize(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        img = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)),
                                                     Image.BICUBIC))
    return img, s


def _split_hash(path: Path) -> float:
    """Position of an independent image in [0, 1): a hash of its file name, so the split is the
    same on every machine and checkout."""
    return int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16) / 2**32


def _yolo_polygons(image_path: Path, w: int, h: int) -> list[np.ndarray]:
    """YOLO label file beside ``images/`` (boxes 'c cx cy w h' or polygons 'c x1 y1 ...')."""
    parts = list(image_path.parts)
    if "images" not in parts:
        return []
    i = len(parts) - 1 - parts[::-1].index("images")
    label = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
    if not label.is_file():
        return []
    polys = []
    for line in label.read_text().splitlines():
        v = [float(t) for t in line.split()[1:]]
        if len(v) == 4:
            cx, cy, bw, bh = v
            x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        elif len(v) >= 6 and len(v) % 2 == 0:
            pts = list(zip(v[0::2], v[1::2], strict=True))
        else:
            continue
        polys.append(np.array(pts, dtype=np.float32) * np.array([w, h], dtype=np.float32))
    return polys


def _coco_polygons(coco: dict, name: str) -> list[np.ndarray]:
    images = {im["file_name"]: im["id"] for im in coco.get("images", [])}
    if name not in images:
        return []
    out = []
    for ann in coco.get("annotations", []):
        if ann.get("image_id") != images[name]:
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            out += [np.array(p, dtype=np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
        elif "bbox" in ann:
            x, y, w, h = ann["bbox"]
            out.append(np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h)], np.float32))
    return out


def _video_frames(path: Path, stride: int, val_fraction: float, gap: int
                  ) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """Every ``stride``-th frame; the last ``val_fraction`` of the clip (after a gap) is val."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
    split = int(n * (1 - val_fraction)) if n else None
    train, val, i = [], [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % stride == 0:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if split is None or i < split - gap:
                train.append((i, rgb))
            elif i >= split:
                val.append((i, rgb))
        i += 1
    cap.release()
    return train, val


def load_dataset(paths: list[str | Path], *, max_side: int = 1024, val_fraction: float = 0.1,
                 video_stride: int = 5, video_gap: int = 50, annotations: str | None = None,
                 forbid: tuple[str, ...] = ("kodak",), progress: bool = True
                 ) -> tuple[list[Sample], list[Sample]]:
    """Scan files and folders into (train, val) samples.

    ``forbid`` names test-set folders that must never be trained on (Kodak by default).
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if any(part.lower() in forbid for part in p.resolve().parts):
            raise ValueError(f"{p} is a test set ({'/'.join(forbid)}): never train on it")
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in
                            IMAGE_EXTS | VIDEO_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"training data not found: {p}")
    if not files:
        raise ValueError(f"no images or videos found in {', '.join(map(str, paths))}")
    coco = json.loads(Path(annotations).read_text()) if annotations else None
    train: list[Sample] = []
    val: list[Sample] = []
    images: list[tuple[float, Sample]] = []
    from PIL import Image

    for f in tqdm(files, desc="loading data", disable=not progress, unit="file"):
        if f.suffix.lower() in VIDEO_EXTS:
            tr, va = _video_frames(f, video_stride, val_fraction, video_gap)
            for dst, frames in ((train, tr), (val, va)):
                for idx, rgb in frames:
                    img, _ = _resize(rgb, max_side)
                    dst.append(Sample(f"{f}#{idx}", img))
            continue
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError:
            continue  # unreadable file: skipped, counted below
        h, w = rgb.shape[:2]
        polys = _coco_polygons(coco, f.name) if coco else _yolo_polygons(f, w, h)
        img, s = _resize(rgb, max_side)
        images.append((_split_hash(f), Sample(str(f), img, [p * s for p in polys])))
    images.sort(key=lambda t: t[0])
    n_val = sum(h < val_fraction for h, _ in images)
    if val_fraction > 0 and n_val == 0 and len(images) >= 2:
        n_val = 1  # a small folder still gets one validation image
    val += [s for _, s in images[:n_val]]
    train += [s for _, s in images[n_val:]]
    if not train:
        raise ValueError("no training samples after the train/validation split")
    return train, val
