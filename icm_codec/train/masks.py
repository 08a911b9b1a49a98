"""Masks that decide which pixels the machine-oriented loss counts.

- ``edges`` (SA-ICM): segment the image into class-agnostic regions, take the region boundaries
  and dilate them into a band. With the ``segment-anything`` package and a checkpoint, Segment
  Anything makes the regions (``alpha`` = its predicted-IoU threshold, as in the paper:
  0.98 / 0.93 / 0.48, lower = more segments). Without one, scikit-image's graph-based
  segmentation (Felzenszwalb & Huttenlocher) runs here, with ``alpha`` mapped to its scale so
  that lower alpha also means more, smaller segments and more edges.
- ``objects`` (Object-ICM): filled object regions from annotations, or from an instance
  segmentation model (e.g. yolo26n-seg) for unlabelled images and video frames.
- ``full``: all ones (plain MSE).

Boundaries are the pixels where the label map changes — exactly what Canny finds on a
piecewise-constant label map, computed directly.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .data import Sample

__all__ = ["MASK_KINDS", "MaskMaker", "edge_mask", "felzenszwalb_scale", "label_boundaries"]

MASK_KINDS = ("edges", "objects", "full")


def felzenszwalb_scale(alpha: float) -> float:
    """Map the SA-ICM confidence knob to Felzenszwalb's scale (monotone: lower alpha, more
    segments). alpha 0.98 -> ~920, 0.93 -> ~760, 0.48 -> ~110 on a 1024-pixel image."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return 20.0 + 980.0 * alpha**3


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour carries another label."""
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


def _dilate(mask: np.ndarray, band: int) -> np.ndarray:
    import cv2

    if band <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def edge_mask(image: np.ndarray, alpha: float = 0.93, band: int = 3,
              segmenter: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """SA-ICM edge band of ``image`` (HxWx3 uint8) -> HxW bool."""
    if segmenter is None:
        from skimage.segmentation import felzenszwalb

        labels = felzenszwalb(image, scale=felzenszwalb_scale(alpha), sigma=0.8, min_size=50)
    else:
        labels = segmenter(image)
    return _dilate(label_boundaries(labels), band)


def sam_segmenter(checkpoint: str, alpha: float, model_type: str = "vit_h",
                  device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Segment Anything as a label-map function (needs the ``segment-anything`` package)."""
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError as e:
        raise ValueError("Segment Anything masks need `pip install segment-anything` and a "
                         "checkpoint; without them use the default scikit-image segmenter") from e
    sam = sam_model_registry[model_type](checkpoint=checkpoint).to(device)
    gen = SamAutomaticMaskGenerator(sam, pred_iou_thresh=alpha)

    def run(image: np.ndarray) -> np.ndarray:
        labels = np.zeros(image.shape[:2], dtype=np.int32)
        for i, m in enumerate(sorted(gen.generate(image), key=lambda r: -r["area"]), 1):
            labels[m["segmentation"]] = i
        return labels

    return run


def polygon_mask(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    import cv2

    m = np.zeros(shape, dtype=np.uint8)
    for p in polygons:
        cv2.fillPoly(m, [np.round(p).astype(np.int32)], 1)
    return m.astype(bool)


class MaskMaker:
    """Computes masks of one kind and caches them on disk (packed bits, keyed by content)."""

    def __init__(self, kind: str, cache_dir: str | Path | None = None, *, alpha: float = 0.93,
                 band: int = 3, sam_checkpoint: str | None = None,
                 seg_weights: str | None = None, device: str = "cpu") -> None:
        if kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
        self.kind, self.alpha, self.band = kind, alpha, band
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._segmenter = sam_segmenter(sam_checkpoint, alpha, device=device) \
            if (kind == "edges" and sam_checkpoint) else None
        self._seg_weights, self._seg_model, self.device = seg_weights, None, device
        self.tag = f"{kind}-a{alpha}-b{band}-{'sam' if self._segmenter else 'fh'}"

    def _path(self, sample: Sample) -> Path | None:
        if self.cache_dir is None:
            return None
        # by what the mask is computed from (pixels, labelled regions), not by the path: the
        # same photo given as ../shared/… or /work/shared/… (the plan, a hand-written command)
        # is one mask, and an edited image or label file is another
        h = hashlib.sha1(f"{self.tag}|{sample.image.shape}".encode())
        h.update(np.ascontiguousarray(sample.image).data)
        for poly in sample.polygons:
            h.update(np.ascontiguousarray(poly, dtype=np.float64).data)
        h = h.hexdigest()
        return self.cache_dir / f"{h[:2]}/{h}.npz"

    def __call__(self, sample: Sample) -> np.ndarray:
        shape = sample.image.shape[:2]
        if self.kind == "full":
            return np.ones(shape, dtype=bool)
        path = self._path(sample)
        if path is not None and path.is_file():
            with np.load(path) as z:
                return np.unpackbits(z["bits"])[: shape[0] * shape[1]].reshape(shape).astype(bool)
        mask = self._compute(sample)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a name of its own: runs beside each other share the cache
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
            np.savez_compressed(tmp, bits=np.packbits(mask.reshape(-1)))
            tmp.replace(path)
        return mask

    def fill(self, samples: list[Sample], workers: int = 1) -> None:
        """Compute the uncached edge masks of ``samples`` in ``workers`` processes (graph
        segmentation costs about a second per image: minutes for a data set on one core, seconds
        on a GPU machine's many cores). Others kinds, or one worker, compute on first use."""
        if workers <= 1 or self.kind != "edges" or self._segmenter or self.cache_dir is None:
            return
        todo = [s for s in samples if not self._path(s).is_file()]  # type: ignore[union-attr]
        if not todo:
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(self, todo, chunksize=4))

    def _compute(self, sample: Sample) -> np.ndarray:
        if self.kind == "edges":
            return edge_mask(sample.image, self.alpha, self.band, self._segmenter)
        if sample.polygons:
            return polygon_mask(sample.image.shape[:2], sample.polygons)
        return self._segment_objects(sample.image)

    def _segment_objects(self, image: np.ndarray) -> np.ndarray:
        """Object regions from an instance-segmentation model (unlabelled images, video)."""
        if self._seg_weights is None:
            raise ValueError("object masks for unlabelled images need --seg-weights "
                             "(e.g. ../shared/assets/detectors/yolo26n-seg.pt)")
        if self._seg_model is None:
            from ultralytics import YOLO

            self._seg_model = YOLO(str(Path(self._seg_weights).resolve()))
        res = self._seg_model.predict(image[:, :, ::-1], verbose=False, device=self.device)[0]
        mask = np.zeros(image.shape[:2], dtype=bool)
        if res.masks is not None:
            for poly in res.masks.xy:
                if len(poly) >= 3:
                    mask |= polygon_mask(image.shape[:2], [poly])
        return mask
