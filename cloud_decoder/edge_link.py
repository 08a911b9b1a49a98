"""``icm.v1.EdgeLink``: the cloud side of each camera's stream.

Every rule a peer can break ends its stream with a status that says which, and touches
nothing of other cameras:

- no Hello within ``hello_timeout_s``: DEADLINE_EXCEEDED; first message not a Hello, a second
  Hello, a bad camera id or Hello field: INVALID_ARGUMENT;
- frame ids that do not increase within the stream, or out of range: INVALID_ARGUMENT;
- more than ``max_in_flight`` frames not yet processed (the edge ignores acks):
  RESOURCE_EXHAUSTED; a message over the size limit: RESOURCE_EXHAUSTED (gRPC's own check);
  bytes that do not parse as an EdgeMessage: INVALID_ARGUMENT;
- an enhancement response to a request never made: INVALID_ARGUMENT (a late answer to a request
  that timed out is dropped quietly);
- an edge that announced heartbeats and is silent for five intervals: UNAVAILABLE (it is gone
  or partitioned away; its human-view requests fail at once instead of timing out).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from icm_rpc import pb, pb_grpc
from icm_rpc.protos import Undecodable
from icm_rpc.tls import peer_identities

from .edge_stats import clean_stats
from .metrics import CloudMetrics
from .pipeline import IngestItem, IngestPipeline, now_us
from .sessions import EdgeSession, SessionRegistry
from .storage import CameraRow, Store, StoreUnavailableError

__all__ = ["MAX_EDGE_FRAME_ID", "EdgeLinkServicer", "hello_problem"]

log = logging.getLogger("icm.cloud")
MAX_EDGE_FRAME_ID = 1 << 48        # ~9000 years at 1000 frames/s; keeps cloud ids in 64 bits
SILENT_INTERVALS = 5               # heartbeats missed before a stream counts as broken
_MAX_TEXT = 256


def _text_ok(value: str, limit: int = _MAX_TEXT) -> bool:
    return len(value) <= limit and value.isprintable()


def hello_problem(hello: pb.Hello) -> str | None:
    """Why a Hello is unacceptable, or None. Strings end up in the database and in logs:
    printable, bounded."""
    cid = hello.camera_id
    if not cid or len(cid) > 128 or not cid.isprintable() or cid != cid.strip():
        return "camera id must be 1-128 printable characters without surrounding spaces"
    if not _text_ok(hello.epoch, 64):
        return "epoch must be at most 64 printable characters"
    for name in ("base_model_id", "base_model_digest", "enhancement_model_id",
                 "enhancement_model_digest", "software_version"):
        if not _text_ok(getattr(hello, name)):
            return f"{name} must be at most {_MAX_TEXT} printable characters"
    for name in ("base_model_digest", "enhancement_model_digest"):
        value = getattr(hello, name)
        if value and not all(c in "0123456789abcdef" for c in value):
            return f"{name} must be lowercase hex (or empty)"
    for name in ("capabilities", "base_models"):
        values = getattr(hello, name)
        if len(values) > 64 or not all(_text_ok(v) for v in values):
            return f"{name}: at most 64 entries of at most {_MAX_TEXT} printable characters"
    if hello.width > 1 << 16 or hello.height > 1 << 16:
        return "width and height must be at most 65536"
    return None


class _Reader(threading.Thread):
    """Reads the edge's messages: the first (the Hello) for the handler, the rest into the
    session once the handler has accepted the stream."""

    def __init__(self, servicer: EdgeLinkServicer, requests: Iterator[pb.EdgeMessage]) -> None:
        super().__init__(name="edge-read", daemon=True)
        self.servicer = servicer
        self.requests = requests
        self.first: queue.Queue[pb.EdgeMessage | None] = queue.Queue(1)
        self.session: EdgeSession | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            first = next(self.requests, None)
        except Exception:  # the stream broke (or bytes that do not parse) before a Hello
            first = None
        self.first.put(first)
        self.ready.wait()
        if self.session is not None:
            self.servicer._read(self.requests, self.session)


class EdgeLinkServicer(pb_grpc.EdgeLinkServicer):
    def __init__(self, store: Store, pipeline: IngestPipeline, sessions: SessionRegistry,
                 metrics: CloudMetrics, *, instance: str, require_identity: bool,
                 heartbeat_s: float = 2.0, hello_timeout_s: float = 10.0,
                 max_in_flight: int = 512, stats_s: float = 10.0) -> None:
        self.store = store
        self.pipeline = pipeline
        self.sessions = sessions
        self.metrics = metrics
        self.instance = instance
        self.require_identity = require_identity
        self.heartbeat_s = heartbeat_s
        self.hello_timeout_s = hello_timeout_s
        self.max_in_flight = max_in_flight
        self.stats_s = stats_s            # ask edges for EdgeStats this often (0: never)
        self._newest: dict[str, float] = {}   # newest stored capture time per camera (s)
        self._newest_lock = threading.Lock()

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str,
                message: str) -> None:
        self.metrics.protocol_errors.labels(reason).inc()
        context.abort(code, message)

    def Connect(self, request_iterator: Iterator[pb.EdgeMessage],
                context: grpc.ServicerContext) -> Iterator[pb.CloudMessage]:
        reader = _Reader(self, request_iterator)
        reader.start()
        session: EdgeSession | None = None
        try:
            try:
                first = reader.first.get(timeout=self.hello_timeout_s)
            except queue.Empty:
                self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "no_hello",
                             f"no Hello within {self.hello_timeout_s:g} s of opening the stream")
            if isinstance(first, Undecodable):
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "undecodable",
                             f"the first message does not parse as an EdgeMessage: "
                             f"{first.error}")
            if first is None or first.WhichOneof("body") != "hello":
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no_hello",
                             "the first message must be a Hello")
            hello = first.hello  # type: ignore[union-attr]
            problem = hello_problem(hello)
            if problem:
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_hello", problem)
            if self.require_identity:
                names = peer_identities(context)
                if hello.camera_id not in names:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"client certificate ({', '.join(sorted(names)) or 'none'}) "
                                  f"does not identify camera {hello.camera_id!r}")
            info = self.store.open_epoch(hello.camera_id, hello.epoch, now_us())
            if not info.newest:
                # an old spool came back after a newer one: its ids would collide with the
                # newer epoch's; it drops what is stored and starts a new epoch
                log.warning("camera %s connected with superseded spool epoch %r (stored up to "
                            "its frame %d): asking it to start a new epoch", hello.camera_id,
                            hello.epoch, info.last_frame_id)
                yield pb.CloudMessage(welcome=pb.Welcome(
                    last_stored_frame_id=info.last_frame_id, cloud_instance=self.instance,
                    new_epoch_required=True))
                return
            session = EdgeSession(hello, context.peer(), offset=info.offset,
                                  heartbeat_s=self.heartbeat_s)
            self.store.upsert_camera(CameraRow(
                hello.camera_id, hello.width, hello.height, hello.base_model_id,
                hello.enhancement_model_id, self.instance, True, now_us(), epoch=hello.epoch,
                retained_from=hello.retained_from_frame_id))
            self.sessions.open(session)
            self.metrics.active_sessions.set(len(self.sessions))
            self._camera_up(session)
            log.info("camera %s connected from %s (edge %s, base %s %s; epoch %r, offset %d, "
                     "stored up to its frame %d; capabilities: %s)", hello.camera_id,
                     context.peer(), hello.software_version or "?",
                     hello.base_model_id or "?", hello.base_model_digest[:12], hello.epoch,
                     info.offset, info.last_frame_id,
                     ", ".join(sorted(session.capabilities)) or "none")
            reader.session = session
            reader.ready.set()
            yield pb.CloudMessage(welcome=pb.Welcome(
                last_stored_frame_id=info.last_frame_id, cloud_instance=self.instance,
                heartbeat_ms=int(self.heartbeat_s * 1000), frame_id_offset=info.offset,
                stats_interval_ms=int(self.stats_s * 1000)))
            idle = session.heartbeat_s or 1.0
            while context.is_active():
                try:
                    msg = session.outbound.get(timeout=idle)
                except queue.Empty:
                    if session.heartbeat_s:
                        yield pb.CloudMessage(heartbeat=pb.Heartbeat())
                    continue
                if msg is None:
                    break
                yield msg
            if session.error is not None:
                context.abort(*session.error)
        finally:
            reader.ready.set()
            if session is not None:
                self._closed(session)

    def _camera_up(self, session: EdgeSession) -> None:
        """The camera's state gauges: connected here, and its newest stored frame's capture
        time (so a camera that connects and sends nothing still ages)."""
        cam = session.camera_id
        self.metrics.camera_connected.labels(cam).set(1)
        try:
            last = self.store.recent_stats(cam, 1).last_capture_us
        except StoreUnavailableError:
            last = 0
        if last:
            self.frame_stored(cam, last)

    def frame_stored(self, camera: str, capture_us: int) -> None:
        """A frame of ``camera`` is stored: advance its last-frame gauge while its stream is
        here (a late batch of a camera that moved must not bring its series back)."""
        if self.sessions.get(camera) is None:
            return
        with self._newest_lock:
            t = capture_us / 1e6
            if t > self._newest.get(camera, 0.0):
                self._newest[camera] = t
                self.metrics.camera_last_frame.labels(camera).set(t)

    def forget_camera(self, camera: str) -> None:
        """Another instance holds the camera's stream now: its state gauges go from here."""
        with self._newest_lock:
            self._newest.pop(camera, None)
            self.metrics.forget_camera(camera)

    def _closed(self, session: EdgeSession) -> None:
        try:
            if self.sessions.close(session):
                self.metrics.camera_connected.labels(session.camera_id).set(0)
                self.store.set_offline(session.camera_id, self.instance, now_us(),
                                       session.retained_from)
        except StoreUnavailableError as e:
            log.warning("camera %s: cannot record it offline: %s", session.camera_id, e)
        self.metrics.active_sessions.set(len(self.sessions))
        log.info("camera %s disconnected%s", session.camera_id,
                 f" ({session.error[1]})" if session.error else "")

    def _violation(self, session: EdgeSession, code: grpc.StatusCode, reason: str,
                   message: str) -> None:
        self.metrics.protocol_errors.labels(reason).inc()
        log.warning("camera %s (%s) broke the protocol: %s", session.camera_id, session.peer,
                    message)
        session.fail(code, message)

    def _read(self, requests: Iterator[pb.EdgeMessage], session: EdgeSession) -> None:
        m = self.metrics
        cam = session.camera_id
        last_id = 0
        bad = grpc.StatusCode.INVALID_ARGUMENT
        try:
            for msg in requests:
                session.heard()
                if session.closed.is_set():
                    break
                if isinstance(msg, Undecodable):
                    self._violation(session, bad, "undecodable",
                                    f"a message does not parse as an EdgeMessage: {msg.error}")
                    break
                kind = msg.WhichOneof("body")
                if kind == "frame":
                    f = msg.frame
                    m.received.labels(cam).inc()
                    m.base_bytes.labels(cam).inc(len(f.layer))
                    if not 0 < f.frame_id <= MAX_EDGE_FRAME_ID:
                        self._violation(session, bad, "frame_id_range",
                                        f"frame id {f.frame_id} out of range 1..2^48")
                        break
                    if f.frame_id <= last_id:
                        self._violation(session, bad, "frame_id_order",
                                        f"frame ids must increase within a stream: "
                                        f"{f.frame_id} after {last_id}")
                        break
                    if session.in_flight >= self.max_in_flight:
                        self._violation(session, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        "window", f"more than {self.max_in_flight} frames "
                                        "sent without waiting for acks")
                        break
                    last_id = f.frame_id
                    session.reader_blocked = True
                    try:
                        taken = self.pipeline.submit(IngestItem(session, f, now_us()))
                    finally:
                        session.reader_blocked = False
                        session.heard()
                    if not taken:
                        break
                elif kind == "enhancement":
                    if not session.resolve(msg.enhancement):
                        self._violation(session, bad, "unsolicited_enhancement",
                                        f"enhancement response to request "
                                        f"{msg.enhancement.request_id}, which was never made")
                        break
                elif kind == "heartbeat":
                    session.retained_from = msg.heartbeat.retained_from_frame_id
                elif kind == "stats":
                    session.stats = clean_stats(msg.stats)
                elif kind == "hello":
                    self._violation(session, bad, "second_hello",
                                    "a stream carries one Hello, as its first message")
                    break
                else:  # a message kind from a newer edge: ignored
                    m.protocol_errors.labels("unknown_message").inc()
        except grpc.RpcError:
            pass  # the stream ended; the writer side sees it too
        except Exception:
            log.exception("reading the stream of camera %s failed", cam)
        finally:
            session.close()

    def reap_silent(self) -> int:
        """End the streams of edges silent for too long (a partition, a dead host: TCP may
        not notice for minutes); returns how many."""
        n = 0
        for s in self.sessions.all():
            if s.heartbeat_s and not s.closed.is_set():
                silent = s.silent_for()
                if silent > SILENT_INTERVALS * s.heartbeat_s:
                    self.metrics.silent_streams.inc()
                    log.warning("camera %s silent for %.1f s: closing its stream", s.camera_id,
                                silent)
                    s.fail(grpc.StatusCode.UNAVAILABLE,
                           f"no message from the edge for {silent:.1f} s")
                    n += 1
        return n
