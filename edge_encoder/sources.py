"""Frame sources: a video file, a folder of images, a camera index or an RTSP/HTTP URL.

All of them yield ``(frame, capture_time_us)`` with frames as HxWx3 uint8 RGB, at most
``max_fps`` frames per second (0: as fast as they come).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["FrameSource", "open_source"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class FrameSource:
    """Iterate to get frames; ``loop`` replays a file or folder forever (simulated cameras)."""

    def __init__(self, spec: str, *, max_fps: float = 0.0, loop: bool = False,
                 limit: int = 0) -> None:
        self.spec = spec
        self.max_fps = max_fps
        self.loop = loop
        self.limit = limit
        path = Path(spec)
        if path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise ValueError(f"no images in folder {spec}")
            self.kind = "folder"
        elif spec.isdigit() or "://" in spec:
            self.kind = "camera" if spec.isdigit() else "url"
        elif path.is_file():
            self.kind = "file"
        else:
            raise ValueError(f"video source not found: {spec} (a video file, an image folder, a "
                             "camera index such as 0, or an rtsp:// URL)")

    def _capture(self):
        import cv2

        cap = cv2.VideoCapture(int(self.spec) if self.kind == "camera" else self.spec)
        if not cap.isOpened():
            raise ValueError(f"cannot open video source {self.spec}")
        return cap

    def _raw(self) -> Iterator[np.ndarray]:
        while True:
            if self.kind == "folder":
                from PIL import Image

                for p in self._files:
                    with Image.open(p) as im:
                        yield np.asarray(im.convert("RGB"))
            else:
                import cv2

                cap = self._capture()
                try:
                    while True:
                        ok, bgr = cap.read()
                        if not ok:
                            break
                        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                finally:
                    cap.release()
            if not self.loop or self.kind in ("camera", "url"):
                return

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        next_t = time.monotonic()
        for n, frame in enumerate(self._raw()):
            if self.limit and n >= self.limit:
                return
            period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0  # settings may change it
            if period:
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_t = max(next_t + period, time.monotonic() - period)
            yield frame, time.time_ns() // 1000


def open_source(spec: str, **kw) -> FrameSource:
    return FrameSource(spec, **kw)
