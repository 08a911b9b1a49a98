"""The ingest pipeline: frames from every camera -> one queue -> batches -> decode (batched
across cameras) -> detectors -> one database transaction -> cumulative acks.

One worker thread keeps each camera's frames in order, so an ack for frame *n* means every
frame up to *n* is stored (or rejected): the edge may drop them from its spool.

While the database is away (:class:`~cloud_decoder.storage.StoreUnavailableError`) the worker
keeps the batch it has decoded and retries its commit with backoff: nothing is acked, the
queue fills, the streams feel back-pressure and the edges keep spooling; when the database
answers again the batch commits and ingest goes on by itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from analytics.results import Detection
from icm_codec.bitstream import ParsedLayer
from icm_rpc import pb
from icm_rpc.backoff import Backoff

from .decoders import Decoded, Decoder, RejectedLayerError, reject_reason
from .metrics import CloudMetrics
from .sessions import EdgeSession
from .storage import DetectorRun, FrameRow, Store, StoreUnavailableError
from .store_monitor import StoreMonitor
from .thumbnails import THUMBNAIL_WIDTH, jpeg_thumbnail

__all__ = ["IngestItem", "IngestPipeline", "now_us"]

log = logging.getLogger("icm.cloud")


@dataclass
class IngestItem:
    session: EdgeSession
    frame: pb.BaseFrame
    arrival_us: int
    layer: ParsedLayer | None = None  # frame.layer parsed, once, by Decoder.check


def now_us() -> int:
    """Unix time in microseconds, the unit of every timestamp the cloud stores."""
    return time.time_ns() // 1000


class IngestPipeline:
    """Args:
        detectors: objects with ``name`` and ``detect(frames) -> [FrameResult]`` (see
            :mod:`analytics`); empty for no analytics. One with ``routes_by_base`` (an
            :class:`analytics.served.ServedDetector`) also gets each frame's base digest and
            answers with the weights adapted to that base where it has them.
        on_stored: called with each newly stored :class:`FrameRow` (live detection streams).
        thumbnail_width: width of the JPEG thumbnail stored with each frame (0: none).
    """

    def __init__(self, store: Store, decoder: Decoder, detectors: Sequence,
                 metrics: CloudMetrics, *, max_batch: int = 32, max_queue: int = 4096,
                 on_stored: Callable[[FrameRow], None] | None = None,
                 thumbnail_width: int = THUMBNAIL_WIDTH,
                 monitor: StoreMonitor | None = None) -> None:
        self.store = store
        self.monitor = monitor
        self.decoder = decoder
        self.detectors = list(detectors)
        self.metrics = metrics
        self.max_batch = max_batch
        self.on_stored = on_stored
        self.thumbnail_width = thumbnail_width  # 0: none at ingest (made when first asked)
        # (camera, capture µs) of each newly stored frame: the per-camera last-frame gauge
        self.on_camera_frame: Callable[[str, int], None] | None = None
        self.max_queue = max_queue
        self._waited = 0.0   # seconds of the current batch spent waiting for the database
        self._queue: queue.Queue[IngestItem] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cloud-ingest", daemon=True)

    def start(self) -> IngestPipeline:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, item: IngestItem) -> bool:
        """Blocks while the queue is full: back-pressure onto the edge's stream. False when
        the stream closed (or the pipeline stopped) meanwhile: the frame was not taken, and
        the edge re-sends it."""
        while True:
            try:
                self._queue.put(item, timeout=0.25)
                break
            except queue.Full:
                if item.session.closed.is_set() or self._stop.is_set():
                    return False
        item.session.add_in_flight(1)
        self.metrics.queue_frames.set(self._queue.qsize())
        return True

    def _take(self) -> list[IngestItem]:
        try:
            items = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(items) < self.max_batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_frames.set(self._queue.qsize())
        return items

    def _loop(self) -> None:
        while True:
            items = self._take()
            if not items:
                if self._stop.is_set():
                    return
                continue
            t0 = time.perf_counter()
            self._waited = 0.0
            try:
                self.process(items)
            except StoreUnavailableError:
                # stopping while the database is away: not stored, not acked; the edges
                # re-send these frames to whichever instance they reach next
                log.warning("stopping with the database away: %d frames left unacked",
                            len(items))
                for session in {id(it.session): it.session for it in items}.values():
                    session.close()
            except Exception:
                # never lose the worker, never ack what is not stored: end those streams, so
                # their edges reconnect and re-send every unacked frame
                log.exception("ingest batch of %d frames failed; closing its streams",
                              len(items))
                for session in {id(it.session): it.session for it in items}.values():
                    session.close()
            finally:
                # busy: working, not waiting for the database to come back (an outage must not
                # look like load to the autoscaler)
                self.metrics.ingest_busy.inc(max(0.0, time.perf_counter() - t0 - self._waited))
                for it in items:
                    it.session.add_in_flight(-1)

    def _store_call(self, fn: Callable[[], object],
                    timed: Callable[[float], None] | None = None) -> object:
        """``fn()``, retried with backoff while the database is unavailable; gives up (raises)
        only when the pipeline stops. ``timed`` gets the seconds of the try that succeeded
        (failed tries and backoff waits are not the call's own time)."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            tried = time.perf_counter()
            try:
                result = fn()
                if timed is not None:
                    timed(time.perf_counter() - tried)
            except StoreUnavailableError as e:
                if self.monitor is not None:
                    self.monitor.report(False, str(e))
                stopping = self._stop.wait(backoff.next_delay())
                self._waited += time.perf_counter() - tried   # the failed try and the wait
                if stopping:
                    raise
                continue
            if self.monitor is not None:
                self.monitor.report(True)
            return result

    def _already_stored(self, items: Sequence[IngestItem]) -> set[tuple[str, int]]:
        by_camera: dict[str, list[int]] = {}
        for it in items:
            by_camera.setdefault(it.session.camera_id, []).append(
                it.session.cloud_id(it.frame.frame_id))
        return {(cam, fid) for cam, ids in by_camera.items()
                for fid in self.store.stored_ids(cam, ids)}

    # -- one batch -----------------------------------------------------------------------------
    def _reject(self, it: IngestItem, reason: str, code: str = "corrupt") -> None:
        """``reason`` (text) goes to the edge and the log; ``code`` (one of
        decoders.REJECT_REASONS) is the metric's label."""
        self.metrics.rejected.labels(it.session.camera_id, code).inc()
        it.session.send(pb.CloudMessage(rejected=pb.FrameRejected(frame_id=it.frame.frame_id,
                                                                  reason=reason)))
        log.warning("camera %s frame %d rejected: %s", it.session.camera_id,
                    it.frame.frame_id, reason)

    def process(self, items: Sequence[IngestItem]) -> list[FrameRow]:
        m = self.metrics
        m.batch_frames.observe(len(items))
        todo: list[IngestItem] = []
        switched: dict[str, str] = {}   # camera -> the base model its frames now name
        stored = self._store_call(lambda: self._already_stored(items))
        for it in items:
            if (it.session.camera_id, it.session.cloud_id(it.frame.frame_id)) in stored:
                m.duplicates.inc()
                continue
            try:
                it.layer = self.decoder.check(it.frame.layer)
                todo.append(it)
            except RejectedLayerError as e:
                self._reject(it, str(e), e.reason)
                continue
            header = it.layer.header
            announced = it.session.base_model_id
            if it.session.note_base(header.model_id, header.model_digest.hex()):
                log.info("camera %s: frame %d is coded by base model %s (%s), not %s as "
                         "announced or before: following the frames", it.session.camera_id,
                         it.frame.frame_id, header.model_id or "?",
                         header.model_digest.hex()[:12], announced or "?")
                switched[it.session.camera_id] = it.session.base_model_id
        if switched:  # every instance answers ListCameras from the database, not the session
            self._store_call(lambda: self.store.set_base_models(switched))
        rows = self._analyse(todo)
        new = self._store_call(lambda: self.store.add_frames(rows),
                               m.commit_seconds.observe) if rows else []
        stored_us = now_us()
        for row, is_new in zip(rows, new, strict=True):
            if not is_new:
                m.duplicates.inc()
                continue
            m.stored.labels(row.camera_id).inc()
            if self.on_camera_frame is not None:
                self.on_camera_frame(row.camera_id, row.capture_us)
            m.capture_to_stored.observe(max(0.0, (stored_us - row.capture_us) / 1e6))
            for d in row.detections:
                m.detections.labels(d.class_name).inc()
            if self.on_stored is not None:
                self.on_stored(row)
        last: dict[int, tuple[EdgeSession, int]] = {}
        for it in items:
            last[id(it.session)] = (it.session, it.frame.frame_id)
        for session, frame_id in last.values():
            session.ack(frame_id)
        return rows

    def _decode(self, todo: list[IngestItem]) -> list[tuple[IngestItem, Decoded]]:
        t0 = time.perf_counter()
        try:
            decoded = self.decoder.decode([it.layer for it in todo])  # parsed by check
            pairs = list(zip(todo, decoded, strict=True))
        except Exception as e:  # isolate the bad frame instead of failing the batch
            log.warning("batch decode failed (%s); decoding frames one by one", e)
            pairs = []
            for it in todo:
                try:
                    pairs.append((it, self.decoder.decode([it.layer])[0]))
                except Exception as e1:
                    code = reject_reason(e1) if isinstance(e1, RejectedLayerError) \
                        else "decode_failed"
                    self._reject(it, f"decode failed: {e1}", code)
        if todo:
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
        return pairs

    def _analyse(self, todo: list[IngestItem]) -> list[FrameRow]:
        pairs = self._decode(todo) if todo else []
        detections: list[list[Detection]] = [[] for _ in pairs]
        analysed: list[list[DetectorRun]] = [[] for _ in pairs]
        images = [d.image for _, d in pairs]
        digests = [d.header.model_digest for _, d in pairs]
        if self.detectors and pairs and all(img is not None for img in images):
            for det in self.detectors:
                t0 = time.perf_counter()
                results = (det.detect(images, base_digests=digests)
                           if getattr(det, "routes_by_base", False) else det.detect(images))
                self.metrics.analytics_seconds.labels(det.name).observe(time.perf_counter() - t0)
                for i, res in enumerate(results):
                    detections[i].extend(d.tagged(det.name) for d in res.detections)
                    used = getattr(res, "weights", None)
                    run = (DetectorRun(det.name, det.name) if used is None else
                           DetectorRun(det.name, used.id, used.sha256[:16], used.adapted))
                    analysed[i].append(run)
                    self.metrics.frames_analysed.labels(det.name, run.weights).inc()
        rows = []
        for (it, dec), dets, runs in zip(pairs, detections, analysed, strict=True):
            h = dec.header
            assert it.layer is not None  # checked
            n = len(it.layer.data)
            rows.append(FrameRow(
                camera_id=it.session.camera_id,
                frame_id=it.session.cloud_id(it.frame.frame_id),
                capture_us=it.frame.capture_time_us or it.arrival_us, arrival_us=it.arrival_us,
                stored_us=now_us(), width=h.width, height=h.height, base_bytes=n,
                bpp=8.0 * n / max(1, h.width * h.height), detections=dets,
                base_layer=it.layer.data, epoch=it.session.epoch,
                edge_frame_id=it.frame.frame_id,
                thumbnail=None if dec.image is None or not self.thumbnail_width
                else jpeg_thumbnail(dec.image, self.thumbnail_width),
                base_model_id=h.model_id, base_digest=h.model_digest.hex(), analysed_by=runs))
        return rows
