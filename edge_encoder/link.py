"""The edge's one long-lived stream to the cloud (the edge dials out: cameras sit behind NAT).

::

    edge                                   cloud
     | Hello ------------------------------> |
     | <------------------------------ Welcome (last stored frame id)
     | BaseFrame, BaseFrame, ... ----------> |  (at most ``window`` unacked in flight)
     | <--------------------------------- Ack (cumulative)
     | <------------------ EnhancementRequest
     | EnhancementResponse ----------------> |
     | <------------------------- Settings

Frames live in the :class:`~edge_encoder.spool.Spool` until acked, so a broken stream (or a
killed edge) re-sends exactly the frames the cloud has not stored; the cloud stores a re-sent
frame once. Ids and acks count within the spool's epoch (Hello.epoch), so a fresh spool never
meets acks meant for another. Reconnects back off exponentially with jitter. When the cloud
asks for heartbeats (Welcome.heartbeat_ms), both sides send one when idle, and a stream silent
for five intervals is cancelled and reconnected: a network partition is noticed in seconds.
When the cloud asks for them (Welcome.stats_interval_ms), the edge also sends its health and
counters (EdgeStats) that often, which the cloud re-exports: a camera behind NAT is observable
without anyone scraping it.

The stream itself is this module: connect and reconnect, the Hello and Welcome, sending frames
within the window, acks, heartbeats, statistics. Enhancement requests go to an
:class:`~edge_encoder.responder.EnhancementResponder` (``submit``); its answers come back
through :meth:`EdgeLink.send`, like any message the stream should carry up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from icm_rpc import pb, pb_grpc
from icm_rpc.backoff import Backoff
from icm_rpc.channels import open_channel
from icm_rpc.metrics import software_version
from icm_rpc.tls import TLSFiles, client_credentials

from .encoder import EdgeEncoder
from .metrics import EdgeMetrics, edge_stats
from .responder import EnhancementResponder
from .spool import Spool

__all__ = ["EdgeLink"]

log = logging.getLogger("icm.edge")
FATAL_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED)
CAPABILITIES = ("enhancement", "settings.base_model", "settings.max_fps", "heartbeat", "stats")
CONNECT = "/icm.v1.EdgeLink/Connect"
SILENT_INTERVALS = 5  # heartbeat intervals of silence after which a stream counts as broken


@dataclass
class _Conn:
    """One stream's state, shared by its reader, its sender and the watchdog."""

    call: grpc.Future | None = None
    welcome: threading.Event = field(default_factory=threading.Event)
    heard: float = field(default_factory=time.monotonic)
    heartbeat_s: float = 0.0
    stats_s: float = 0.0
    sent: int = 0
    renewed: bool = False
    cancelled: str = ""


class EdgeLink:
    """Runs the stream in a background thread until :meth:`stop`.

    Args:
        encoder: makes the enhancement layers the cloud asks for (through the link's
            :class:`~edge_encoder.responder.EnhancementResponder`, ``responder``).
        hello_extra: called at each connect for fresh Hello fields (frame size, models).
        stats: makes the EdgeStats sent when the cloud asks for them (default: from
            ``metrics``).
    """

    def __init__(self, camera_id: str, target: str, spool: Spool, encoder: EdgeEncoder,
                 metrics: EdgeMetrics, *, tls: TLSFiles | None = None, server_name: str = "",
                 window: int = 64, hello_extra: Callable[[], dict] | None = None,
                 on_settings: Callable[[pb.Settings], None] | None = None,
                 backoff: Backoff | None = None, welcome_timeout_s: float = 30.0,
                 stats: Callable[[], pb.EdgeStats] | None = None) -> None:
        self.camera_id = camera_id
        self.target = target
        self.spool = spool
        self.metrics = metrics
        self.tls = tls or TLSFiles()
        self.server_name = server_name
        self.window = window
        self.hello_extra = hello_extra or (lambda: {})
        self.on_settings = on_settings
        self.backoff = backoff or Backoff()
        self.welcome_timeout_s = welcome_timeout_s
        self.stats = stats or (lambda: edge_stats(self.metrics))
        self.last_error: grpc.RpcError | None = None
        self.cloud_instance = ""   # the cloud instance holding the stream (its Welcome says)
        self.on_connection: Callable[[bool], None] | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._control: queue.Queue[pb.EdgeMessage] = queue.Queue()
        self._acked = 0
        self.responder = EnhancementResponder(spool, encoder, metrics, send=self.send)
        self._thread = threading.Thread(target=self._run, name="edge-link", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="edge-link-watch",
                                          daemon=True)
        self._call: grpc.Future | None = None
        self._conn: _Conn | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EdgeLink:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.notify()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout)
        self.responder.close()

    def notify(self) -> None:
        """Wake the sender (a frame was spooled, an ack arrived)."""
        with self._wake:
            self._wake.notify_all()

    def send(self, msg: pb.EdgeMessage) -> None:
        """Send ``msg`` up the stream ahead of pending frames (now, or once connected)."""
        self._control.put(msg)
        self.notify()

    def _channel(self) -> grpc.Channel:
        creds = client_credentials(self.tls) if self.tls.enabled else None
        return open_channel(self.target, creds, self.server_name, keepalive=True)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                self.metrics.reconnects.inc()
            first = False
            again = False
            try:
                again = self._session()
            except grpc.RpcError as e:
                self.last_error = e
                code = e.code() if hasattr(e, "code") else None
                if self._stop.is_set():
                    break
                level = logging.ERROR if code in FATAL_CODES else logging.WARNING
                log.log(level, "stream to %s ended: %s %s", self.target,
                        code.name if code else "?", e.details() if hasattr(e, "details") else e)
            finally:
                self._conn = None
                self.connected.clear()
                self.metrics.connected.set(0)
                self.metrics.cloud_instance.clear()
                if self.on_connection is not None:
                    self.on_connection(False)
            if not again and self._stop.wait(self.backoff.next_delay()):
                break

    def _watch(self) -> None:
        """Cancel a stream the cloud has gone silent on (a partition: TCP and keepalive take
        far longer to notice), and one whose Welcome does not come."""
        while not self._stop.wait(0.25):
            conn = self._conn
            if conn is None or conn.call is None or conn.cancelled:
                continue
            silent = time.monotonic() - conn.heard
            if conn.heartbeat_s and silent > SILENT_INTERVALS * conn.heartbeat_s:
                reason = f"no message from the cloud for {silent:.1f} s"
            elif not conn.welcome.is_set() and silent > self.welcome_timeout_s:
                reason = f"no Welcome within {self.welcome_timeout_s:g} s"
            else:
                continue
            conn.cancelled = reason
            log.warning("stream to %s: %s: reconnecting", self.target, reason)
            conn.call.cancel()

    # -- one connection ------------------------------------------------------------------------
    def _session(self) -> bool:
        """One stream, until it ends; True to reconnect at once (a new epoch was started)."""
        conn = _Conn()
        g = self.metrics.grpc
        labels = g.labels("bidi_stream", CONNECT)
        code = grpc.StatusCode.OK
        with self._channel() as channel:
            stub = pb_grpc.EdgeLinkStub(channel)
            g.started.labels(*labels).inc()
            call = stub.Connect(self._outbound(conn))
            conn.call = self._call = call
            self._conn = conn
            try:
                for msg in call:
                    g.received.labels(*labels).inc()
                    conn.heard = time.monotonic()
                    kind = msg.WhichOneof("body")
                    if kind == "welcome":
                        self._welcome(conn, msg.welcome)
                    elif kind == "ack":
                        self._ack(msg.ack.frame_id)
                    elif kind == "rejected":
                        self.metrics.dropped.labels("rejected_by_cloud").inc()
                        log.warning("cloud rejected frame %d: %s", msg.rejected.frame_id,
                                    msg.rejected.reason)
                    elif kind == "enhancement_request":
                        self.responder.submit(msg.enhancement_request)
                    elif kind == "settings" and self.on_settings is not None:
                        self.on_settings(msg.settings)
                    self.notify()
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if not conn.cancelled or self._stop.is_set():
                    raise
                self.last_error = e  # cancelled by the watchdog: the reason is logged
            finally:
                g.handled.labels(*labels, getattr(code, "name", "UNKNOWN")).inc()
                self._call = None
                conn.welcome.set()  # release the sender
        return conn.renewed

    def _welcome(self, conn: _Conn, w: pb.Welcome) -> None:
        last = w.last_stored_frame_id
        self._ack(last)  # what the cloud has of this epoch: never more
        if w.new_epoch_required:
            old = self.spool.epoch
            new = self.spool.renew_epoch()
            conn.renewed = True
            log.warning("the cloud has a newer spool of camera %s than this one (epoch %r, "
                        "stored up to frame %d): the %d frames still pending go on as epoch "
                        "%r", self.camera_id, old, last, self.spool.pending_stats()[0], new)
            conn.welcome.set()
            return
        self.spool.skip_to(last)
        conn.sent = max(self._acked, last)
        conn.heartbeat_s = w.heartbeat_ms / 1000
        conn.stats_s = w.stats_interval_ms / 1000
        self.cloud_instance = w.cloud_instance
        self.connected.set()
        self.metrics.connected.set(1)
        self.metrics.cloud_instance.clear()
        self.metrics.cloud_instance.labels(w.cloud_instance or "?").set(1)
        if self.on_connection is not None:
            self.on_connection(True)
        self.backoff.reset()
        conn.welcome.set()
        log.info("connected to %s, instance %s (cloud has frames up to %d of epoch %r; the "
                 "camera's ids are this epoch's + %d)", self.target, w.cloud_instance or "?",
                 last, self.spool.epoch, w.frame_id_offset)

    def _ack(self, frame_id: int) -> None:
        if frame_id <= self._acked:
            return
        n = self.spool.ack(frame_id)
        self._acked = frame_id
        if n:
            self.metrics.acked.inc(n)
        frames, nbytes = self.spool.pending_stats()
        self.metrics.spool_frames.set(frames)
        self.metrics.spool_bytes.set(nbytes)

    def _heartbeat(self) -> pb.EdgeMessage:
        return pb.EdgeMessage(heartbeat=pb.Heartbeat(
            retained_from_frame_id=self.spool.retained_from()))

    def _outbound(self, conn: _Conn) -> Iterator[pb.EdgeMessage]:
        sent = self.metrics.grpc.sent.labels(*self.metrics.grpc.labels("bidi_stream", CONNECT))
        for msg in self._messages(conn):
            sent.inc()
            yield msg

    def _messages(self, conn: _Conn) -> Iterator[pb.EdgeMessage]:
        hello = pb.Hello(camera_id=self.camera_id, capabilities=list(CAPABILITIES),
                         software_version=software_version(), epoch=self.spool.epoch,
                         retained_from_frame_id=self.spool.retained_from(),
                         **self.hello_extra())
        yield pb.EdgeMessage(hello=hello)
        while not conn.welcome.wait(0.5):
            if self._stop.is_set():
                return
        last_sent = time.monotonic()
        next_stats = time.monotonic()
        while not self._stop.is_set() and self._call is not None and not conn.renewed:
            if conn.stats_s and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + conn.stats_s
                try:
                    yield pb.EdgeMessage(stats=self.stats())
                    last_sent = time.monotonic()
                except Exception:  # never lose the stream over its statistics
                    log.exception("cannot make the edge statistics")
            try:
                while True:
                    yield self._control.get_nowait()
                    last_sent = time.monotonic()
            except queue.Empty:
                pass
            room = self.window - (conn.sent - self._acked)
            batch = self.spool.pending_after(conn.sent, room) if room > 0 else []
            for f in batch:
                yield pb.EdgeMessage(frame=pb.BaseFrame(frame_id=f.frame_id,
                                                        capture_time_us=f.capture_us,
                                                        layer=f.layer))
                conn.sent = f.frame_id
                last_sent = time.monotonic()
                self.metrics.sent.inc()
            if conn.heartbeat_s and time.monotonic() - last_sent >= conn.heartbeat_s:
                yield self._heartbeat()
                last_sent = time.monotonic()
            if not batch:
                with self._wake:
                    self._wake.wait(0.25)
