"""The edge encoder process: capture -> encode -> spool, and the stream that empties the spool.

::

    with EdgeService(EdgeConfig(camera_id="cam-1", cloud="cloud:50051", source="vtest.avi")) as e:
        e.run()            # until the source ends and every frame is acked (or stop())

Stall detector: while capturing, no frame from the source for ``stall_s`` (or three frame
periods at a low frame rate) logs a warning, counts ``icm_edge_capture_stalls_total``, sets
``icm_edge_capture_up`` to 0 and turns the health of the process ("" on ``--health-listen``)
NOT_SERVING until frames come again. Time spent encoding does not count: only waiting for the
source does.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from icm_rpc import pb
from icm_rpc.backoff import Backoff
from icm_rpc.health import HealthServer
from icm_rpc.metrics import MetricsServer

from .config import EdgeConfig
from .encoder import EdgeEncoder
from .link import EdgeLink
from .metrics import EdgeMetrics
from .sources import FrameSource
from .spool import Spool

__all__ = ["EdgeConfig", "EdgeService"]

log = logging.getLogger("icm.edge")


class EdgeService:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = c = config
        if c.threads:
            torch.set_num_threads(c.threads)
        # the source first: a bad source fails before anything is written to disk
        self.metrics = EdgeMetrics()
        self.source = FrameSource(c.source, max_fps=c.max_fps, loop=c.loop, limit=c.frames,
                                  on_event=self._source_event) if c.source else None
        self.metrics_server = MetricsServer(self.metrics.registry, c.metrics_port)
        self.encoder = EdgeEncoder(c.base_model, c.enhancement_model, c.enhancement_mode,
                                   self.metrics, refine_steps=c.refine_steps)
        self.spool = Spool(c.spool_dir / "spool.sqlite3", c.camera_id,
                           max_bytes=int(c.max_spool_mb * 2**20),
                           max_retained_bytes=int(c.max_retained_mb * 2**20),
                           retention_s=c.retention_s)
        self.size = (0, 0)
        self.link = EdgeLink(c.camera_id, c.cloud, self.spool, self.encoder, self.metrics,
                             tls=c.tls, server_name=c.server_name, window=c.window,
                             hello_extra=self._hello, on_settings=self._settings,
                             backoff=Backoff(maximum=c.max_backoff_s))
        self.capture_done = threading.Event()
        self.stalled = False
        self._waiting_since: float | None = None   # waiting for the source since (monotonic)
        self._stop = threading.Event()
        self._closed = False
        self.health = HealthServer(c.health_listen) if c.health_listen else None
        self.metrics.spool_max_bytes.set(self.spool.max_bytes)
        self.metrics.retained_max_bytes.set(self.spool.max_retained_bytes)
        self.metrics.retention_seconds.set(c.retention_s)
        self._refresh_gauges()

    def _hello(self) -> dict:
        return {**self.encoder.describe(), "width": self.size[0], "height": self.size[1],
                "base_models": self.encoder.available_bases()}

    def _settings(self, s: pb.Settings) -> None:
        if s.base_model_id:
            try:
                self.encoder.switch_base(s.base_model_id)
                log.info("base rate point switched to %s", s.base_model_id)
            except (ValueError, OSError) as e:
                log.error("cannot switch base model to %s: %s", s.base_model_id, e)
        if s.max_fps > 0 and self.source is not None:
            self.source.max_fps = s.max_fps

    def _source_event(self, event: str) -> None:
        self.metrics.source_events.labels(event).inc()

    def _stall_threshold(self) -> float:
        fps = self.source.max_fps if self.source is not None else 0.0
        return max(self.config.stall_s, 3.0 / fps if fps > 0 else 0.0)

    def _set_stalled(self, stalled: bool, waited: float = 0.0) -> None:
        if stalled == self.stalled:
            return
        self.stalled = stalled
        self.metrics.capture_up.set(0 if stalled else 1)
        if stalled:
            self.metrics.capture_stalls.inc()
            log.warning("capture stalled: no frame from source %s for %.1f s",
                        self.source.name if self.source else "?", waited)
        else:
            log.warning("capture resumed")
        if self.health is not None:
            self.health.set("", not stalled)

    def _watch_capture(self) -> None:
        while not self._stop.wait(0.25) and not self.capture_done.is_set():
            since = self._waiting_since
            if since is None:
                continue
            waited = time.monotonic() - since
            if waited > self._stall_threshold():
                self._set_stalled(True, waited)

    def _refresh_gauges(self) -> None:
        m = self.metrics
        frames, nbytes = self.spool.pending_stats()
        m.spool_frames.set(frames)
        m.spool_bytes.set(nbytes)
        frames, nbytes = self.spool.retained_stats()
        m.retained_frames.set(frames)
        m.retained_bytes.set(nbytes)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EdgeService:
        self.metrics_server.start()
        self.link.start()
        if self.health is not None:
            # the process is healthy while it runs; "icm.v1.EdgeLink" tells whether the
            # stream to the cloud is up (spooling goes on either way)
            self.health.start()
            self.health.set("", True)
            self.link.on_connection = lambda up: self.health.set("icm.v1.EdgeLink", up)
            self.health.set("icm.v1.EdgeLink", self.link.connected.is_set())
        return self

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (signal handlers); :meth:`stop` cleans up."""
        self._stop.set()
        if self.source is not None:
            self.source.close()

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        self.link.stop()
        if self.health is not None:
            self.health.stop()
        self.metrics_server.stop()
        self.spool.close()

    def __enter__(self) -> EdgeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def capture_one(self, frame, capture_us: int | None = None) -> int:
        """Encode and spool one frame; returns its frame id."""
        self.metrics.captured.inc()
        self.size = (frame.shape[1], frame.shape[0])
        frame_id = self.spool.next_frame_id()
        enc = self.encoder.encode(frame, frame_id)
        dropped = self.spool.add(frame_id, capture_us or time.time_ns() // 1000, enc.base,
                                 enhancement=enc.enhancement, raw_png=enc.raw_png)
        if dropped:
            self.metrics.dropped.labels("spool_full").inc(len(dropped))
            log.warning("spool full: dropped %d unacked frames (oldest %d)", len(dropped),
                        dropped[0])
        self._refresh_gauges()
        self.link.notify()
        return frame_id

    def capture(self, on_frame=None) -> int:
        """Capture until the source ends or :meth:`stop`; returns frames captured."""
        n = 0
        if self.source is None:
            raise ValueError("no source configured (--source)")
        watcher = threading.Thread(target=self._watch_capture, name="edge-stall", daemon=True)
        self.capture_done.clear()
        self.metrics.capture_up.set(1)
        self._waiting_since = time.monotonic()
        watcher.start()
        try:
            for frame, t_us in self.source:
                self._waiting_since = None
                self._set_stalled(False)
                if self._stop.is_set():
                    break
                fid = self.capture_one(frame, t_us)
                n += 1
                if on_frame is not None:
                    on_frame(fid, frame)
                self._waiting_since = time.monotonic()
        finally:
            self._waiting_since = None
            self.capture_done.set()
        return n

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until every spooled frame is acked."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self.spool.pending_stats()[0] == 0:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return False

    def run(self, keep_running: bool = False) -> None:
        """Capture everything, wait for the acks; with ``keep_running``, then serve
        enhancement requests until stopped."""
        self.capture()
        self.wait_drained()
        if keep_running:
            self._stop.wait()
