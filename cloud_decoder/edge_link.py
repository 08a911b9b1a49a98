"""``icm.v1.EdgeLink``: the cloud side of each camera's stream."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from icm_rpc import pb, pb_grpc
from icm_rpc.tls import peer_identities

from .metrics import CloudMetrics
from .pipeline import IngestItem, IngestPipeline, now_us
from .sessions import EdgeSession, SessionRegistry
from .storage import CameraRow, Store

__all__ = ["EdgeLinkServicer"]

log = logging.getLogger("icm.cloud")


class EdgeLinkServicer(pb_grpc.EdgeLinkServicer):
    def __init__(self, store: Store, pipeline: IngestPipeline, sessions: SessionRegistry,
                 metrics: CloudMetrics, *, instance: str, require_identity: bool) -> None:
        self.store = store
        self.pipeline = pipeline
        self.sessions = sessions
        self.metrics = metrics
        self.instance = instance
        self.require_identity = require_identity

    def Connect(self, request_iterator: Iterator[pb.EdgeMessage],
                context: grpc.ServicerContext) -> Iterator[pb.CloudMessage]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello")
        hello = first.hello
        if not hello.camera_id or len(hello.camera_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "camera id must be 1-128 characters")
        if self.require_identity:
            names = peer_identities(context)
            if hello.camera_id not in names:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"client certificate ({', '.join(sorted(names)) or 'none'}) does "
                              f"not identify camera {hello.camera_id!r}")
        session = EdgeSession(hello, context.peer())
        self.sessions.open(session)
        self.metrics.active_sessions.set(len(self.sessions))
        self.store.upsert_camera(CameraRow(
            hello.camera_id, hello.width, hello.height, hello.base_model_id,
            hello.enhancement_model_id, self.instance, True, now_us()))
        last = self.store.last_frame_id(hello.camera_id)
        log.info("camera %s connected from %s (stored up to frame %d)", hello.camera_id,
                 context.peer(), last)
        reader = threading.Thread(target=self._read, args=(request_iterator, session, context),
                                  name=f"edge-read-{hello.camera_id}", daemon=True)
        reader.start()
        try:
            yield pb.CloudMessage(welcome=pb.Welcome(last_stored_frame_id=last,
                                                     cloud_instance=self.instance))
            while context.is_active():
                msg = session.outbound.get()
                if msg is None:
                    break
                yield msg
        finally:
            if self.sessions.close(session):
                self.store.set_offline(hello.camera_id, self.instance, now_us())
            self.metrics.active_sessions.set(len(self.sessions))
            log.info("camera %s disconnected", hello.camera_id)

    def _read(self, requests: Iterator[pb.EdgeMessage], session: EdgeSession,
              context: grpc.ServicerContext) -> None:
        m = self.metrics
        cam = session.camera_id
        last_id = 0
        try:
            for msg in requests:
                kind = msg.WhichOneof("body")
                if kind == "frame":
                    f = msg.frame
                    m.received.labels(cam).inc()
                    m.base_bytes.labels(cam).inc(len(f.layer))
                    if f.frame_id <= last_id:
                        # ids start at 1 and increase: a broken edge; refuse, keep the stream
                        m.rejected.labels(cam, "frame id not increasing").inc()
                        continue
                    last_id = f.frame_id
                    self.pipeline.submit(IngestItem(session, f, now_us()))
                elif kind == "enhancement":
                    session.resolve(msg.enhancement)
        except grpc.RpcError:
            pass  # the stream ended; the writer side sees it too
        except Exception:
            log.exception("reading the stream of camera %s failed", cam)
        finally:
            session.close()
