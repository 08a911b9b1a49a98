"""``icm.v1.Analyst``: what people (and dashboards) ask the cloud."""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np

from analytics.results import Detection
from icm_rpc import pb, pb_grpc

from .decoders import CodecDecoder, RejectedLayerError
from .forwarding import Forwarder
from .metrics import CloudMetrics
from .sessions import EnhancementUnavailableError, SessionRegistry
from .storage import FrameQuery, FrameRow, Store
from .thumbnails import jpeg_thumbnail

__all__ = ["AnalystServicer", "DetectionHub", "detection_message", "enhancement_state",
           "frame_message", "png_bytes"]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def enhancement_state(row: FrameRow, camera: tuple[str, int, str] | None) -> int:
    """Whether a human view of ``row`` can be had; ``camera``: (current epoch, oldest edge frame
    id the edge keeps, enhancement model id), as the edge last reported them."""
    if row.human_view_cached:
        return pb.ENHANCEMENT_CACHED
    if camera is None or not camera[1]:
        return pb.ENHANCEMENT_UNKNOWN
    epoch, retained_from, enhancement_model = camera
    if not enhancement_model:
        return pb.ENHANCEMENT_UNSUPPORTED
    if row.epoch != epoch or row.edge_frame_id < retained_from:
        return pb.ENHANCEMENT_EXPIRED
    return pb.ENHANCEMENT_AT_EDGE


def detection_message(d: Detection) -> pb.Detection:
    return pb.Detection(class_id=d.class_id, class_name=d.class_name, score=d.score,
                        box=list(d.box_xyxy), model=d.model,
                        mask=[pb.MaskPolygon(xy=poly) for poly in d.mask_polygons or ()])


def frame_message(row: FrameRow, enhancement: int = 0, thumbnail: bytes | None = None
                  ) -> pb.FrameRecord:
    return pb.FrameRecord(
        camera_id=row.camera_id, frame_id=row.frame_id, capture_time_us=row.capture_us,
        arrival_time_us=row.arrival_us, stored_time_us=row.stored_us,
        base_bytes=row.base_bytes, bpp=row.bpp, width=row.width, height=row.height,
        edge_epoch=row.epoch, edge_frame_id=row.edge_frame_id, enhancement=enhancement,
        detections=[detection_message(d) for d in row.detections],
        thumbnail_jpeg=thumbnail or b"",
        analysed_by=[pb.DetectorRun(model=r.model, weights=r.weights, weights_sha256=r.sha256,
                                    adapted=r.adapted) for r in row.analysed_by],
        base_model_id=row.base_model_id, base_model_digest=row.base_digest)


class DetectionHub:
    """Fans newly stored frames out to live ``WatchDetections`` streams (slow watchers lose
    the oldest updates rather than stall ingest)."""

    def __init__(self) -> None:
        self._subs: list[tuple[queue.Queue, str, str]] = []
        self._lock = threading.Lock()

    def publish(self, row: FrameRow) -> None:
        with self._lock:
            subs = list(self._subs)
        for q, cam, cls in subs:
            if (cam and row.camera_id != cam) or (cls and cls not in row.class_names):
                continue
            try:
                q.put_nowait(row)
            except queue.Full:
                try:
                    q.get_nowait()
                    q.put_nowait(row)
                except (queue.Empty, queue.Full):
                    pass

    def subscribe(self, camera_id: str, class_name: str) -> queue.Queue:
        q: queue.Queue = queue.Queue(256)
        with self._lock:
            self._subs.append((q, camera_id, class_name))
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s[0] is not q]


class AnalystServicer(pb_grpc.AnalystServicer):
    def __init__(self, store: Store, sessions: SessionRegistry, decoder: CodecDecoder | None,
                 hub: DetectionHub, metrics: CloudMetrics, *,
                 enhancement_timeout_s: float = 30.0,
                 forwarder: Forwarder | None = None) -> None:
        self.store = store
        self.forwarder = forwarder
        self.sessions = sessions
        self.decoder = decoder
        self.hub = hub
        self.metrics = metrics
        self.enhancement_timeout_s = enhancement_timeout_s

    def _frame(self, camera_id: str, frame_id: int, context: grpc.ServicerContext,
               with_layer: bool = False) -> FrameRow:
        if not camera_id or frame_id <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "camera_id and frame_id are needed")
        if frame_id >= 1 << 62:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"frame_id {frame_id} out of range")
        row = self.store.frame(camera_id, frame_id, with_layer=with_layer)
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no frame {frame_id} of camera {camera_id!r} is stored")
        return row  # type: ignore[return-value]

    def _decoder(self, context: grpc.ServicerContext) -> CodecDecoder:
        if self.decoder is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this cloud runs without a codec (--decoder noop): no images")
        return self.decoder  # type: ignore[return-value]

    def _camera_states(self, live_only: bool = False) -> dict[str, tuple[str, int, str]]:
        """What each camera's edge keeps: the database's record, overridden by live streams."""
        states = {} if live_only else self.store.camera_epochs()
        for s in self.sessions.all():
            states[s.camera_id] = (s.epoch, s.retained_from, s.hello.enhancement_model_id)
        return states

    def _record(self, row: FrameRow, states: dict[str, tuple[str, int, str]] | None = None,
                thumbnail: bytes | None = None) -> pb.FrameRecord:
        states = self._camera_states() if states is None else states
        return frame_message(row, enhancement_state(row, states.get(row.camera_id)), thumbnail)

    def ListCameras(self, request, context):
        live = {s.camera_id: s for s in self.sessions.all()}
        cams = []
        for c in self.store.cameras(request.camera_id):
            width, height = c.width, c.height
            if not width and c.last_frame_id:  # the edge said hello before its first frame
                last = self.store.frame(c.camera_id, c.last_frame_id)
                width, height = (last.width, last.height) if last else (0, 0)
            session = live.get(c.camera_id)
            recent = self.store.recent_stats(c.camera_id)
            if session is not None:
                base_models = list(session.hello.base_models)
            elif request.camera_id:   # one camera: its stream's instance knows (one call)
                base_models = self._remote_base_models(c.camera_id, c.online, c.instance,
                                                       context)
            else:
                base_models = []
            cams.append(pb.Camera(camera_id=c.camera_id, online=c.online or session is not None,
                                  width=width, height=height,
                                  base_model_id=(session.base_model_id if session is not None
                                                 else c.base_model_id),
                                  frames_stored=c.frames_stored, last_frame_id=c.last_frame_id,
                                  last_seen_us=c.last_seen_us, instance=c.instance,
                                  base_models=base_models,
                                  enhancement_model_id=c.enhancement_model_id,
                                  last_capture_us=recent.last_capture_us,
                                  recent_bpp=recent.mean_bpp, recent_kbps=recent.kbps,
                                  recent_fps=recent.fps))
        return pb.ListCamerasResponse(cameras=cams)

    def _peer(self, online: bool, instance: str, context: grpc.ServicerContext) -> str:
        """The instance holding a camera's stream when it is another one ('' otherwise)."""
        fw = self.forwarder
        if (fw is None or fw.is_forwarded(context) or not online or not instance
                or instance == fw.instance):
            return ""
        return instance

    def _remote_base_models(self, camera_id: str, online: bool, instance: str,
                            context: grpc.ServicerContext) -> list[str]:
        peer = self._peer(online, instance, context)
        if not peer:
            return []
        try:
            # short: a stale row (an instance that died) must not hold up a listing
            resp = self.forwarder.call(peer, "ListCameras",  # type: ignore[union-attr]
                                       pb.ListCamerasRequest(camera_id=camera_id), context,
                                       max_timeout_s=2.0)
        except grpc.RpcError:
            return []   # a list without the models, not a failed listing
        return [m for cam in resp.cameras for m in cam.base_models]

    def ListFrames(self, request, context):
        if request.limit > 10000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit is at most 10000")
        q = FrameQuery(camera_id=request.camera_id, since_us=request.since_us,
                       until_us=request.until_us, class_name=request.class_name,
                       limit=request.limit or 100, after_frame_id=request.after_frame_id,
                       before_frame_id=request.before_frame_id,
                       newest_first=request.newest_first)
        rows = self.store.with_analysis(self.store.frames(q))
        thumbs = (self.store.thumbnails([(r.camera_id, r.frame_id) for r in rows])
                  if request.include_thumbnails else {})
        states = self._camera_states()
        return pb.ListFramesResponse(frames=[
            self._record(r, states, thumbs.get((r.camera_id, r.frame_id))) for r in rows])

    def GetFrame(self, request, context):
        row = self._frame(request.camera_id, request.frame_id, context,
                          with_layer=request.include_image or request.include_thumbnail)
        self.store.with_analysis([row])
        thumb = None
        image = None
        if request.include_thumbnail:
            thumb = self.store.thumbnails([(row.camera_id, row.frame_id)]).get(
                (row.camera_id, row.frame_id))
            if thumb is None:  # stored before thumbnails existed: make it once, keep it
                image = self._decoder(context).decode([row.base_layer])[0].image
                thumb = jpeg_thumbnail(image)
                self.store.put_thumbnail(row.camera_id, row.frame_id, thumb)
        resp = pb.GetFrameResponse(frame=self._record(row, thumbnail=thumb),
                                   human_view_cached=self.store.has_human_view(
                                       row.camera_id, row.frame_id))
        if request.include_image:
            if image is None:
                image = self._decoder(context).decode([row.base_layer])[0].image
            resp.machine_png = png_bytes(image)
        return resp

    def GetHumanView(self, request, context):
        row = self._frame(request.camera_id, request.frame_id, context, with_layer=True)
        cached = self.store.human_view(row.camera_id, row.frame_id)
        if cached is not None:
            self.metrics.enhancement_requests.labels("cached").inc()
            return self._human_response(row, *cached, cached=True)
        if request.cached_only:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no human view of frame {row.frame_id} of camera {row.camera_id!r} "
                          "is cached")
        if self.sessions.get(row.camera_id) is None:
            forwarded = self._forward_human_view(request, context)
            if forwarded is not None:
                return forwarded
        decoder = self._decoder(context)
        session = self.sessions.get(row.camera_id)
        if session is None:
            self.metrics.enhancement_requests.labels("camera_offline").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"camera {row.camera_id!r} is offline: its enhancement layers are at "
                          "the edge")
        if session.epoch != row.epoch:  # type: ignore[union-attr]
            self.metrics.enhancement_requests.labels("not_retained").inc()
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"frame {row.frame_id} was captured under an earlier spool of camera "
                          f"{row.camera_id!r} (epoch {row.epoch!r}), which the edge no longer "
                          "has: its enhancement data is no longer retained")
        silent = session.silent_for()  # type: ignore[union-attr]
        if session.heartbeat_s and silent > 2 * session.heartbeat_s:  # type: ignore[union-attr]
            self.metrics.enhancement_requests.labels("camera_offline").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"camera {row.camera_id!r} has been silent for {silent:.1f} s "
                          "(network partition?): its enhancement layers are at the edge")
        remaining = context.time_remaining()
        timeout = min(self.enhancement_timeout_s, remaining if remaining else 1e9)
        t0 = time.perf_counter()
        try:
            layer = session.request_enhancement(  # type: ignore[union-attr]
                row.edge_frame_id, timeout)
        except TimeoutError as e:
            self.metrics.enhancement_requests.labels("timeout").inc()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except ConnectionError as e:
            self.metrics.enhancement_requests.labels("camera_offline").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except EnhancementUnavailableError as e:
            self.metrics.enhancement_requests.labels("not_retained").inc()
            context.abort(grpc.StatusCode.NOT_FOUND, f"edge has no enhancement layer: {e}")
        try:
            image = decoder.decode_human(row.base_layer, layer)  # type: ignore[arg-type]
        except RejectedLayerError as e:
            self.metrics.enhancement_requests.labels("bad_layer").inc()
            context.abort(grpc.StatusCode.DATA_LOSS, f"the edge sent an unusable layer: {e}")
        png = png_bytes(image)
        self.store.put_human_view(row.camera_id, row.frame_id, png, len(layer), row.capture_us)
        self.metrics.enhancement_requests.labels("decoded").inc()
        self.metrics.enhancement_seconds.observe(time.perf_counter() - t0)
        return self._human_response(row, png, len(layer), cached=False)

    def _forward_human_view(self, request, context) -> pb.GetHumanViewResponse | None:
        """The camera streams to another instance (shared database): ask that one. None when
        there is no such instance (the caller answers UNAVAILABLE)."""
        fw = self.forwarder
        if fw is None or fw.is_forwarded(context):
            return None
        cam = self.store.camera(request.camera_id)
        if cam is None or not cam.online or not cam.instance or cam.instance == fw.instance:
            return None
        try:
            resp = fw.get_human_view(cam.instance, request, context)
        except grpc.RpcError as e:
            self.metrics.enhancement_requests.labels("forward_failed").inc()
            context.abort(e.code(), f"via instance {cam.instance}: {e.details()}")
        self.metrics.enhancement_requests.labels("forwarded").inc()
        return resp

    @staticmethod
    def _human_response(row: FrameRow, png: bytes, enh_bytes: int,
                        cached: bool) -> pb.GetHumanViewResponse:
        total = 8.0 * (row.base_bytes + enh_bytes) / max(1, row.width * row.height)
        return pb.GetHumanViewResponse(png=png, enhancement_bytes=enh_bytes, total_bpp=total,
                                       cached=cached)

    def WatchDetections(self, request, context) -> Iterator[pb.FrameDetections]:
        q = self.hub.subscribe(request.camera_id, request.class_name)
        try:
            while context.is_active():
                try:
                    row = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                yield pb.FrameDetections(frame=self._record(
                    row, self._camera_states(True),
                    row.thumbnail if request.include_thumbnails else None))
        finally:
            self.hub.unsubscribe(q)

    def ChangeSettings(self, request, context):
        session = self.sessions.get(request.camera_id)
        if session is None:
            cam = self.store.camera(request.camera_id)
            peer = self._peer(cam.online, cam.instance, context) if cam else ""
            if peer:   # the camera streams to another instance: settings go down that stream
                try:
                    return self.forwarder.call(peer, "ChangeSettings",  # type: ignore[union-attr]
                                               request, context)
                except grpc.RpcError as e:
                    context.abort(e.code(), f"via instance {peer}: {e.details()}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"camera {request.camera_id!r} is offline")
        settings = request.settings
        wanted = [cap for cap, asked in (("settings.base_model", settings.base_model_id),
                                         ("settings.max_fps", settings.max_fps > 0)) if asked]
        missing = [cap for cap in wanted
                   if cap not in session.capabilities]  # type: ignore[union-attr]
        if missing:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"camera {request.camera_id!r} cannot change {', '.join(missing)}: "
                          f"its edge does not announce it (capabilities: "
                          f"{', '.join(sorted(session.capabilities)) or 'none'})")  # type: ignore[union-attr]
        base = settings.base_model_id
        if base and base not in session.hello.base_models:  # type: ignore[union-attr]
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"camera {request.camera_id!r} has no base model {base!r} (it has: "
                          f"{', '.join(session.hello.base_models)})")  # type: ignore[union-attr]
        session.send(pb.CloudMessage(settings=request.settings))  # type: ignore[union-attr]
        return pb.ChangeSettingsResponse()
