"""Frame sources: a video file, a folder of images, a camera index or an RTSP/HTTP URL.

All of them yield ``(frame, capture_time_us)`` with frames as HxWx3 uint8 RGB, at most
``max_fps`` frames per second (0: as fast as they come).

Files and folders end (or replay with ``loop``). Cameras and URLs are *live*: when one fails
to open, stops delivering or ends, it is reopened with backoff until :meth:`FrameSource.close`,
each attempt logged (URL passwords redacted) and reported through ``on_event``. The edge's stall
detector (``EdgeService``) turns a long silence into health NOT_SERVING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from icm_rpc.backoff import Backoff
from icm_rpc.redact import redact_url

__all__ = ["FrameSource", "open_source"]

log = logging.getLogger("icm.edge")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class FrameSource:
    """Iterate to get frames; ``loop`` replays a file or folder forever (simulated cameras).

    Args:
        on_event: called with ``"open_failed"``, ``"lost"`` (a live source stopped) and
            ``"reopened"`` (metrics).
        backoff: delays between reopen attempts of a live source.
        io_timeout_s: open/read timeout for URL sources (a dead RTSP server must not block a
            read for minutes).
    """

    def __init__(self, spec: str, *, max_fps: float = 0.0, loop: bool = False,
                 limit: int = 0, on_event: Callable[[str], None] | None = None,
                 backoff: Backoff | None = None, io_timeout_s: float = 10.0) -> None:
        self.spec = spec
        self.name = redact_url(spec)
        self.max_fps = max_fps
        self.loop = loop
        self.limit = limit
        self.on_event = on_event or (lambda event: None)
        self.backoff = backoff or Backoff(initial=0.5, maximum=10.0)
        self.io_timeout_s = io_timeout_s
        self._closed = threading.Event()
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

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url")

    def close(self) -> None:
        """End iteration (also interrupts a reopen backoff)."""
        self._closed.set()

    def _capture(self):
        import cv2

        if self.kind == "camera":
            return cv2.VideoCapture(int(self.spec))
        if self.kind == "url":
            ms = int(self.io_timeout_s * 1000)
            return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG,
                                    [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        return cv2.VideoCapture(self.spec)

    def _read_capture(self, cap) -> Iterator[np.ndarray]:
        import cv2

        try:
            while not self._closed.is_set():
                ok, bgr = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    def _file_frames(self) -> Iterator[np.ndarray]:
        while not self._closed.is_set():
            if self.kind == "folder":
                from PIL import Image

                for p in self._files:
                    with Image.open(p) as im:
                        yield np.asarray(im.convert("RGB"))
            else:
                cap = self._capture()
                if not cap.isOpened():
                    raise ValueError(f"cannot open video source {self.spec}")
                yield from self._read_capture(cap)
            if not self.loop:
                return

    def _live_frames(self) -> Iterator[np.ndarray]:
        """Open, read, and on any failure reopen with backoff, until closed."""
        lost_at: float | None = None
        while not self._closed.is_set():
            cap = self._capture()
            if not cap.isOpened():
                cap.release()
                self.on_event("open_failed")
                delay = self.backoff.next_delay()
                log.warning("cannot open source %s: retrying in %.1f s", self.name, delay)
                if self._closed.wait(delay):
                    return
                continue
            got = False
            for frame in self._read_capture(cap):
                if not got:
                    got = True
                    self.backoff.reset()
                    if lost_at is not None:
                        self.on_event("reopened")
                        log.warning("source %s delivers frames again (after %.1f s)",
                                    self.name, time.monotonic() - lost_at)
                        lost_at = None
                yield frame
            if self._closed.is_set():
                return
            if lost_at is None:
                lost_at = time.monotonic()
            self.on_event("lost")
            delay = self.backoff.next_delay()
            log.warning("source %s stopped delivering frames: reopening in %.1f s", self.name,
                        delay)
            if self._closed.wait(delay):
                return

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        next_t = time.monotonic()
        raw = self._live_frames() if self.live else self._file_frames()
        for n, frame in enumerate(raw):
            if self.limit and n >= self.limit:
                return
            period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0  # settings may change it
            if period:
                delay = next_t - time.monotonic()
                if delay > 0 and self._closed.wait(delay):
                    return
                next_t = max(next_t + period, time.monotonic() - period)
            yield frame, time.time_ns() // 1000


def open_source(spec: str, **kw) -> FrameSource:
    return FrameSource(spec, **kw)
