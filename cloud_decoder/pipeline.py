"""The ingest pipeline: frames from every camera -> one queue -> batches -> decode (batched
across cameras) -> detectors -> one database transaction -> cumulative acks.

One worker thread keeps each camera's frames in order, so an ack for frame *n* means every
frame up to *n* is stored (or rejected): the edge may drop them from its spool.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from icm_rpc import pb

from .decoders import NoopDecoder, RejectedLayerError
from .metrics import CloudMetrics
from .sessions import EdgeSession
from .storage import FrameRow, Store
from .thumbnails import THUMBNAIL_WIDTH, jpeg_thumbnail

__all__ = ["IngestItem", "IngestPipeline", "now_us"]

log = logging.getLogger("icm.cloud")


@dataclass
class IngestItem:
    session: EdgeSession
    frame: pb.BaseFrame
    arrival_us: int


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

    def __init__(self, store: Store, decoder: NoopDecoder, detectors: Sequence,
                 metrics: CloudMetrics, *, max_batch: int = 32, max_queue: int = 4096,
                 on_stored: Callable[[FrameRow], None] | None = None,
                 thumbnail_width: int = THUMBNAIL_WIDTH) -> None:
        self.store = store
        self.decoder = decoder
        self.detectors = list(detectors)
        self.metrics = metrics
        self.max_batch = max_batch
        self.on_stored = on_stored
        self.thumbnail_width = thumbnail_width  # 0: none at ingest (made when first asked)
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

    def submit(self, item: IngestItem) -> None:
        """Blocks when the queue is full: back-pressure onto the edge's stream."""
        self._queue.put(item)
        self.metrics.queue_frames.set(self._queue.qsize())

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
            try:
                self.process(items)
            except Exception:
                # never lose the worker, never ack what is not stored: end those streams, so
                # their edges reconnect and re-send every unacked frame
                log.exception("ingest batch of %d frames failed; closing its streams",
                              len(items))
                for session in {id(it.session): it.session for it in items}.values():
                    session.close()

    # -- one batch -----------------------------------------------------------------------------
    def _reject(self, it: IngestItem, reason: str) -> None:
        self.metrics.rejected.labels(it.session.camera_id, reason.split(":")[0][:40]).inc()
        it.session.send(pb.CloudMessage(rejected=pb.FrameRejected(frame_id=it.frame.frame_id,
                                                                  reason=reason)))
        log.warning("camera %s frame %d rejected: %s", it.session.camera_id,
                    it.frame.frame_id, reason)

    def process(self, items: Sequence[IngestItem]) -> list[FrameRow]:
        m = self.metrics
        m.batch_frames.observe(len(items))
        todo: list[IngestItem] = []
        for it in items:
            if self.store.has_frame(it.session.camera_id, it.frame.frame_id):
                m.duplicates.inc()
                continue
            try:
                self.decoder.check(it.frame.layer)
                todo.append(it)
            except RejectedLayerError as e:
                self._reject(it, str(e))
        rows = self._analyse(todo)
        new = self.store.add_frames(rows)
        stored_us = now_us()
        for row, is_new in zip(rows, new, strict=True):
            if not is_new:
                m.duplicates.inc()
                continue
            m.stored.labels(row.camera_id).inc()
            m.capture_to_stored.observe(max(0.0, (stored_us - row.capture_us) / 1e6))
            for d in row.detections:
                m.detections.labels(d.get("class_name", "")).inc()
            if self.on_stored is not None:
                self.on_stored(row)
        last: dict[int, tuple[EdgeSession, int]] = {}
        for it in items:
            last[id(it.session)] = (it.session, it.frame.frame_id)
        for session, frame_id in last.values():
            session.ack(frame_id)
        return rows

    def _decode(self, todo: list[IngestItem]) -> list[tuple[IngestItem, object]]:
        t0 = time.perf_counter()
        try:
            decoded = self.decoder.decode([it.frame.layer for it in todo])
            pairs = list(zip(todo, decoded, strict=True))
        except Exception as e:  # isolate the bad frame instead of failing the batch
            log.warning("batch decode failed (%s); decoding frames one by one", e)
            pairs = []
            for it in todo:
                try:
                    pairs.append((it, self.decoder.decode([it.frame.layer])[0]))
                except Exception as e1:
                    self._reject(it, f"decode failed: {e1}")
        if todo:
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
        return pairs

    def _analyse(self, todo: list[IngestItem]) -> list[FrameRow]:
        pairs = self._decode(todo) if todo else []
        detections: list[list[dict]] = [[] for _ in pairs]
        analysed: list[list[dict]] = [[] for _ in pairs]
        images = [d.image for _, d in pairs]  # type: ignore[attr-defined]
        digests = [d.header.model_digest for _, d in pairs]  # type: ignore[attr-defined]
        if self.detectors and pairs and all(img is not None for img in images):
            for det in self.detectors:
                t0 = time.perf_counter()
                results = (det.detect(images, base_digests=digests)
                           if getattr(det, "routes_by_base", False) else det.detect(images))
                self.metrics.analytics_seconds.labels(det.name).observe(time.perf_counter() - t0)
                for i, res in enumerate(results):
                    detections[i].extend({**d.to_dict(), "model": det.name}
                                         for d in res.detections)
                    used = getattr(res, "weights", None)
                    run = {"model": det.name, **(used.to_dict() if used is not None else
                                                 {"weights": det.name, "adapted": False})}
                    analysed[i].append(run)
                    self.metrics.frames_analysed.labels(det.name, run["weights"]).inc()
        rows = []
        for (it, dec), dets, runs in zip(pairs, detections, analysed, strict=True):
            h = dec.header  # type: ignore[attr-defined]
            n = len(it.frame.layer)
            rows.append(FrameRow(
                camera_id=it.session.camera_id, frame_id=it.frame.frame_id,
                capture_us=it.frame.capture_time_us or it.arrival_us, arrival_us=it.arrival_us,
                stored_us=now_us(), width=h.width, height=h.height, base_bytes=n,
                bpp=8.0 * n / max(1, h.width * h.height), detections=dets,
                base_layer=bytes(it.frame.layer),
                thumbnail=None if dec.image is None or not self.thumbnail_width
                else jpeg_thumbnail(dec.image, self.thumbnail_width),
                base_model_id=h.model_id, base_digest=h.model_digest.hex(), analysed_by=runs))
        return rows
