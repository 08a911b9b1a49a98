"""Cloud analytics on machine images: YOLO detection and segmentation, COCO mAP, benchmarks.

::

    from analytics import Detector, MultiDetector
    det = Detector("yolo11n", weights_dir="../shared/assets/detectors")   # or a .pt path
    results = det.detect(frames)          # frames: HxWx3 uint8 RGB -> [FrameResult]
    results[0].to_dict()                  # class id/name, score, box, mask polygons/RLE

Weights never download by surprise: see :mod:`analytics.weights`. Detectors fine-tuned on
machine images (``icm adapt-detector``) carry a record tying them to base packages by digest
(:mod:`analytics.adapted`); the cloud serves them per frame (:mod:`analytics.served`).
"""

from .adapted import AdaptedDetector, AdaptedRecord, find_adapted, load_adapted
from .detector import Detector, MultiDetector, polygons_to_rle
from .errors import AnalyticsError, WeightsNotFoundError
from .metrics import MapResult, coco_map, load_yolo_labels
from .results import Detection, FrameResult, WeightsInfo
from .served import ServedDetector
from .weights import KNOWN_WEIGHTS, downloads_allowed, ensure_offline_env, resolve_weights

__all__ = [
    "KNOWN_WEIGHTS",
    "AdaptedDetector",
    "AdaptedRecord",
    "AnalyticsError",
    "Detection",
    "Detector",
    "FrameResult",
    "MapResult",
    "MultiDetector",
    "ServedDetector",
    "WeightsInfo",
    "WeightsNotFoundError",
    "coco_map",
    "downloads_allowed",
    "ensure_offline_env",
    "find_adapted",
    "load_adapted",
    "load_yolo_labels",
    "polygons_to_rle",
    "resolve_weights",
]
