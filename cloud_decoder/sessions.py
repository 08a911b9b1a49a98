"""Connected edge streams, by camera: the cloud's only way to reach a camera behind NAT.

A session owns the stream's outbound queue. Enhancement requests wait on a future that the
stream's reader completes when the edge answers. A session knows its spool epoch's offset (the
camera's id of a frame is ``offset`` + the edge's id), when the edge was last heard from, and
why it was ended when the peer broke the protocol. It also keeps what the edge announced in
its Hello: its capabilities (what the cloud may ask of it) and its base model, which each
stored frame's layer header confirms or, after a switch, replaces (:meth:`note_base`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import grpc

from icm_rpc import pb

__all__ = ["EdgeSession", "EnhancementUnavailableError", "SessionRegistry"]

_CLOSE = None


class EnhancementUnavailableError(LookupError):
    """The edge answered without a layer (frame no longer retained, no enhancement codec)."""


class EdgeSession:
    """Args:
        offset: the camera's id of this epoch's frame 0 (see ``storage.EpochInfo``).
        heartbeat_s: the interval the edge was told; 0 when it sends no heartbeats (an edge
            from before them), so silence is never held against it.
    """

    def __init__(self, hello: pb.Hello, peer: str, *, offset: int = 0,
                 heartbeat_s: float = 0.0) -> None:
        self.hello = hello
        self.camera_id = hello.camera_id
        self.epoch = hello.epoch
        self.offset = offset
        self.peer = peer
        self.capabilities = frozenset(hello.capabilities)
        self.heartbeat_s = heartbeat_s if "heartbeat" in self.capabilities else 0.0
        # the base model the edge codes with: announced, then as its frames' headers say
        self.base_model_id = hello.base_model_id
        self.base_digest = hello.base_model_digest
        self.retained_from = hello.retained_from_frame_id
        self.stats: pb.EdgeStats | None = None   # the edge's newest EdgeStats (edge_stats.py)
        self.outbound: queue.Queue[pb.CloudMessage | None] = queue.Queue()
        self.closed = threading.Event()
        self.error: tuple[grpc.StatusCode, str] | None = None
        self.last_heard = time.monotonic()
        self.reader_blocked = False       # the reader waits for room in the ingest queue
        self.in_flight = 0                # frames submitted, not yet processed
        self._ids = itertools.count(1)
        self._issued = 0
        self._waiting: dict[int, Future] = {}
        self._lock = threading.Lock()
        self.last_acked = 0

    def note_base(self, model_id: str, digest_hex: str) -> bool:
        """A frame's layer header names the base model that coded it (``digest_hex``: the
        header's 16 digest bytes). True when that is not the model the session knew (the
        Hello's, or the last frame's): the edge switched, or announced another; the session
        then follows the frames."""
        known = self.base_digest
        if known and (known.startswith(digest_hex) or digest_hex.startswith(known)):
            return False
        self.base_model_id, self.base_digest = model_id, digest_hex
        return bool(known)

    def cloud_id(self, edge_frame_id: int) -> int:
        return self.offset + edge_frame_id

    def add_in_flight(self, n: int) -> int:
        with self._lock:
            self.in_flight += n
            return self.in_flight

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the edge was last heard from (0 while our own reader is held back
        by ingest back-pressure: that silence is ours)."""
        if self.reader_blocked:
            return 0.0
        return time.monotonic() - self.last_heard

    def send(self, msg: pb.CloudMessage) -> None:
        if not self.closed.is_set():
            self.outbound.put(msg)

    def ack(self, frame_id: int) -> None:
        """Cumulative ack, in the edge's ids."""
        if frame_id > self.last_acked:
            self.last_acked = frame_id
            self.send(pb.CloudMessage(ack=pb.Ack(frame_id=frame_id)))

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream with this status (the peer broke the protocol, or went silent)."""
        with self._lock:
            if self.error is None:
                self.error = (code, message)
        self.close()

    def close(self) -> None:
        self.closed.set()
        self.outbound.put(_CLOSE)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"camera {self.camera_id} disconnected"))

    def request_enhancement(self, frame_id: int, timeout: float) -> bytes:
        """Ask the edge for a frame's enhancement layer (``frame_id``: the edge's id); raises
        TimeoutError, ConnectionError (stream gone) or EnhancementUnavailableError."""
        req_id = next(self._ids)
        fut: Future = Future()
        with self._lock:
            if self.closed.is_set():
                raise ConnectionError(f"camera {self.camera_id} disconnected")
            self._waiting[req_id] = fut
            self._issued = req_id
        self.send(pb.CloudMessage(enhancement_request=pb.EnhancementRequest(
            request_id=req_id, frame_id=frame_id)))
        try:
            resp: pb.EnhancementResponse = fut.result(timeout)
        except FutureTimeout as e:
            raise TimeoutError(f"camera {self.camera_id} did not answer within "
                               f"{timeout:.1f} s") from e
        finally:
            with self._lock:
                self._waiting.pop(req_id, None)
        if not resp.layer:
            raise EnhancementUnavailableError(resp.error or "the edge sent no layer")
        return resp.layer

    def resolve(self, resp: pb.EnhancementResponse) -> bool:
        """Hand an answer to its waiting request. False for an answer to a request that was
        never made (a broken or hostile peer); a late answer (the request timed out) is
        dropped and counts as fine."""
        with self._lock:
            if not 0 < resp.request_id <= self._issued:
                return False
            fut = self._waiting.get(resp.request_id)
        if fut is not None and not fut.done():
            fut.set_result(resp)
        return True


class SessionRegistry:
    def __init__(self) -> None:
        self._by_camera: dict[str, EdgeSession] = {}
        self._lock = threading.Lock()

    def open(self, session: EdgeSession) -> EdgeSession | None:
        """Register; returns the session it replaces (a camera reconnected), now closed."""
        with self._lock:
            old = self._by_camera.get(session.camera_id)
            self._by_camera[session.camera_id] = session
        if old is not None:
            old.close()
        return old

    def close(self, session: EdgeSession) -> bool:
        """Unregister if still current; True when the camera has no stream left."""
        session.close()
        with self._lock:
            if self._by_camera.get(session.camera_id) is session:
                del self._by_camera[session.camera_id]
                return True
        return False

    def get(self, camera_id: str) -> EdgeSession | None:
        with self._lock:
            return self._by_camera.get(camera_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_camera)

    def all(self) -> list[EdgeSession]:
        with self._lock:
            return list(self._by_camera.values())
