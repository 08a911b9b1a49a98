"""Ultralytics YOLO behind one small interface: RGB frames in, :class:`FrameResult` out.

::

    det = Detector("yolo11n", weights_dir="../shared/assets/detectors")
    results = det.detect(frames)                       # frames: HxWx3 uint8 RGB
    many = MultiDetector.load(["yolo11n", "yolo26n-seg"], weights_dir=...)
    by_model = many.detect(frames)                     # {"yolo11n": [...], "yolo26n-seg": [...]}

Frames are grouped by size before batching: Ultralytics letterboxes a batch of mixed sizes
differently from a single frame, so grouping keeps a frame's result independent of the batch it
arrives in. A detector is not thread-safe; use one per worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AnalyticsError
from .results import Detection, FrameResult, WeightsInfo
from .weights import file_sha256, import_ultralytics, resolve_weights

__all__ = ["Detector", "MultiDetector", "polygons_to_rle"]

MASK_FORMATS = ("polygon", "rle", "both")


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int,
                    width: int) -> dict[str, Any]:
    """COCO RLE (``counts`` as text) of the union of polygons; degenerate parts are dropped."""
    from pycocotools import mask as mask_utils

    parts = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if parts:
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    else:
        rle = mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    counts = rle["counts"]
    return {"size": [int(height), int(width)],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _check_frame(frame: np.ndarray, i: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise AnalyticsError(f"frame {i}: expected an HxWx3 uint8 RGB array, got shape "
                             f"{arr.shape} {arr.dtype}")
    return arr


class Detector:
    """One YOLO model (detection or instance segmentation), batched, on CPU or CUDA.

    Args:
        model: a weights path or a model name (``yolo11n``); see :mod:`analytics.weights`.
        weights_dir: folder searched for ``<name>.pt`` before ``$ICM_DETECTOR_DIR``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        conf: score threshold; ``iou``: NMS threshold (ignored by NMS-free models).
        imgsz: inference size (long side, letterboxed); ``batch_size``: frames per forward pass.
        max_det: most detections per frame; ``mask_format``: ``polygon``, ``rle`` or ``both``.
        half: fp16 inference (CUDA only).
        name: the name results carry (default: the weights' file stem).
        weights_id: the weights' own name in :attr:`weights_info` (default: ``name``); an
            adapted detector serving a stock detector's slot keeps the slot's ``name``.
        adapted: the weights are adapted to machine images (:mod:`analytics.adapted`).
    """

    def __init__(self, model: str | os.PathLike[str], *,
                 weights_dir: str | os.PathLike[str] | None = None, device: str = "cpu",
                 conf: float = 0.25, iou: float = 0.7, imgsz: int = 640, batch_size: int = 8,
                 max_det: int = 300, mask_format: str = "polygon", half: bool = False,
                 name: str | None = None, weights_id: str | None = None,
                 adapted: bool = False) -> None:
        if mask_format not in MASK_FORMATS:
            raise AnalyticsError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        if batch_size < 1:
            raise AnalyticsError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= conf <= 1.0:
            raise AnalyticsError(f"conf must lie in [0, 1], got {conf}")
        if not (device == "cpu" or device.startswith("cuda")):
            raise AnalyticsError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise AnalyticsError("device 'cuda' asked for, but torch sees no CUDA device")
        self.weights = resolve_weights(model, weights_dir)
        ultralytics = import_ultralytics()
        try:
            self._yolo = ultralytics.YOLO(self.weights)
        except Exception as e:  # corrupt or foreign file: say which one
            raise AnalyticsError(f"cannot load detector weights {self.weights}: {e}") from e
        self.task = str(self._yolo.task)
        if self.task not in ("detect", "segment"):
            raise AnalyticsError(f"{self.weights} is a {self.task!r} model; only detection and "
                                 "instance segmentation are supported")
        self.names: dict[int, str] = {int(k): str(v) for k, v in self._yolo.names.items()}
        self.name = name or Path(str(self.weights)).stem
        sha = file_sha256(self.weights) if Path(self.weights).is_file() else ""
        self.weights_info = WeightsInfo(weights_id or self.name, sha, adapted)
        self.device = device
        self.conf, self.iou, self.imgsz = float(conf), float(iou), int(imgsz)
        self.batch_size, self.max_det = int(batch_size), int(max_det)
        self.mask_format, self.half = mask_format, bool(half and device.startswith("cuda"))

    def __repr__(self) -> str:
        return (f"Detector({self.name!r}, task={self.task!r}, device={self.device!r}, "
                f"conf={self.conf}, imgsz={self.imgsz}, batch_size={self.batch_size})")

    @property
    def is_segmenter(self) -> bool:
        return self.task == "segment"

    def detect(self, frames: Sequence[np.ndarray], *, conf: float | None = None,
               frame_ids: Sequence[str | int] | None = None) -> list[FrameResult]:
        """Results for each frame, in order. ``conf`` overrides the threshold for this call."""
        frames = [_check_frame(f, i) for i, f in enumerate(frames)]
        if frame_ids is not None and len(frame_ids) != len(frames):
            raise AnalyticsError("frame_ids must have one entry per frame")
        import torch

        # Ultralytics' device setup calls torch.set_num_threads(cpu_count - 1): a process-wide
        # side effect that would silently change the codec's speed. Put the caller's back.
        threads = torch.get_num_threads()
        try:
            return self._detect(frames, conf, frame_ids)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def _detect(self, frames: list[np.ndarray], conf: float | None,
                frame_ids: Sequence[str | int] | None) -> list[FrameResult]:
        out: list[FrameResult | None] = [None] * len(frames)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                # Ultralytics takes numpy frames as BGR (OpenCV order)
                preds = self._yolo.predict(
                    [np.ascontiguousarray(frames[i][:, :, ::-1]) for i in chunk],
                    imgsz=self.imgsz, conf=self.conf if conf is None else float(conf),
                    iou=self.iou, device=self.device, max_det=self.max_det, verbose=False,
                    **({"quantize": 16} if self.half else {}))
                for i, pred in zip(chunk, preds, strict=True):
                    fid = frame_ids[i] if frame_ids is not None else i
                    out[i] = self._convert(pred, frames[i].shape[:2], fid)
        return out  # type: ignore[return-value]

    def _convert(self, pred: Any, size: tuple[int, int], frame_id: str | int) -> FrameResult:
        boxes = pred.boxes
        xyxy = boxes.xyxy.detach().cpu().numpy().astype(np.float64)
        scores = boxes.conf.detach().cpu().numpy().astype(np.float64)
        classes = boxes.cls.detach().cpu().numpy().astype(np.int64)
        polys: list[list[list[float]] | None] = [None] * len(scores)
        if self.is_segmenter and pred.masks is not None:
            # masks.xy: one contour per detection in frame pixels; COCO wants flat lists
            polys = [[c.reshape(-1).astype(np.float64).tolist()] if len(c) >= 3 else []
                     for c in pred.masks.xy]
        elif self.is_segmenter:
            polys = [[] for _ in scores]
        h, w = size
        dets = []
        for k in range(len(scores)):
            cid = int(classes[k])
            poly = polys[k]
            rle = None
            if poly is not None and self.mask_format in ("rle", "both"):
                rle = polygons_to_rle(poly, h, w)
            if self.mask_format == "rle":
                poly = None
            x1, y1, x2, y2 = (float(v) for v in xyxy[k])
            dets.append(Detection(cid, self.names.get(cid, str(cid)), float(scores[k]),
                                  (x1, y1, x2, y2), poly, rle))
        return FrameResult(self.name, (h, w), dets, frame_id, self.task, self.weights_info)


class MultiDetector:
    """Several models on the same frames (the cloud runs every recognition model it hosts)."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors = list(detectors)
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise AnalyticsError(f"detector names must be unique, got {names}")

    @classmethod
    def load(cls, models: Iterable[str | os.PathLike[str]], **kwargs: Any) -> MultiDetector:
        """One :class:`Detector` per model name or path; ``kwargs`` go to each."""
        return cls(Detector(m, **kwargs) for m in models)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.detectors]

    def __len__(self) -> int:
        return len(self.detectors)

    def __iter__(self):
        return iter(self.detectors)

    def __getitem__(self, name: str) -> Detector:
        for d in self.detectors:
            if d.name == name:
                return d
        raise KeyError(name)

    def detect(self, frames: Sequence[np.ndarray], **kwargs: Any) -> dict[str, list[FrameResult]]:
        """``{model name: [FrameResult per frame]}``."""
        return {d.name: d.detect(frames, **kwargs) for d in self.detectors}
