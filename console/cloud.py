"""The console's side of the cloud's Analyst API: an asyncio gRPC client (one channel, so one
connection however many people browse) and the translation of gRPC status codes into HTTP
statuses and sentences a person can act on.

The console holds no state of its own besides caches: any cloud instance behind ``--cloud``
answers (instances sharing a database see the same frames and forward human-view requests to
the instance that holds the camera's stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from icm_rpc import pb, pb_grpc
from icm_rpc.channels import channel_options
from icm_rpc.tls import TLSFiles, client_credentials

__all__ = ["CloudAPI", "CloudError", "camera_json", "frame_json"]


class CloudError(Exception):
    """A cloud answer the console passes on: HTTP status, a short code, a clear message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: (400, "bad_request"),
         grpc.StatusCode.NOT_FOUND: (404, "not_found"),
         grpc.StatusCode.FAILED_PRECONDITION: (409, "not_possible"),
         grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
         grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
         grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "busy"),
         grpc.StatusCode.DATA_LOSS: (502, "bad_layer")}


def from_rpc(e: grpc.RpcError, what: str) -> CloudError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CloudError(502, "cloud_refused",
                          "the cloud refused the console's analyst token (check "
                          "ICM_ANALYST_TOKEN of the console and of the cloud)")
    low = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in low
                                                or "dns resolution failed" in low
                                                or "connection refused" in low):
        return CloudError(502, "cloud_unreachable", f"the cloud is unreachable ({details})")
    status, short = _HTTP.get(code, (502, "cloud_error"))  # type: ignore[arg-type]
    return CloudError(status, short, details if status < 500 else f"{what}: {details}")


def camera_json(c: pb.Camera) -> dict[str, Any]:
    return {"camera_id": c.camera_id, "online": c.online, "width": c.width, "height": c.height,
            "base_model_id": c.base_model_id, "base_models": list(c.base_models),
            "enhancement_model_id": c.enhancement_model_id,
            "frames_stored": c.frames_stored, "last_frame_id": c.last_frame_id,
            "last_capture_us": c.last_capture_us, "last_seen_us": c.last_seen_us,
            "recent_bpp": round(c.recent_bpp, 5), "recent_kbps": round(c.recent_kbps, 2),
            "recent_fps": round(c.recent_fps, 3), "instance": c.instance}


def frame_json(f: pb.FrameRecord) -> dict[str, Any]:
    return {"camera_id": f.camera_id, "frame_id": f.frame_id,
            "capture_time_us": f.capture_time_us, "stored_time_us": f.stored_time_us,
            "width": f.width, "height": f.height, "base_bytes": f.base_bytes,
            "bpp": round(f.bpp, 5),
            "detections": [{"class_id": d.class_id, "class_name": d.class_name,
                            "score": round(d.score, 4), "box": [round(v, 1) for v in d.box],
                            "model": d.model,
                            "mask": [[round(v, 1) for v in p.xy] for p in d.mask]}
                           for d in f.detections],
            "base_model_id": f.base_model_id,
            "analysed_by": [{"model": a.model, "weights": a.weights, "adapted": a.adapted}
                            for a in f.analysed_by]}


@dataclass
class CloudAPI:
    target: str
    token: str = ""
    tls: TLSFiles | None = None
    server_name: str = ""
    timeout_s: float = 15.0
    human_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AnalystStub | None = None
        self.metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @property
    def stub(self) -> pb_grpc.AnalystStub:
        """Made on first use, inside the server's event loop (aio channels belong to one)."""
        if self._stub is None:
            opts = channel_options(self.server_name)
            if self.tls is not None and self.tls.enabled:
                self._channel = grpc.aio.secure_channel(self.target,
                                                        client_credentials(self.tls), opts)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, opts)
            self._stub = pb_grpc.AnalystStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def _call(self, method: str, request: Any, what: str,
                    timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=timeout or self.timeout_s,
                                                    metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc(e, what) from None

    async def cameras(self, camera_id: str = "") -> list[pb.Camera]:
        resp = await self._call("ListCameras", pb.ListCamerasRequest(camera_id=camera_id),
                                "listing cameras")
        return list(resp.cameras)

    async def camera(self, camera_id: str) -> pb.Camera:
        cams = await self.cameras(camera_id)
        if not cams:
            raise CloudError(404, "unknown_camera", f"no camera {camera_id!r} is known to the "
                             "cloud")
        return cams[0]

    async def frames(self, camera_id: str, *, class_name: str = "", since_us: int = 0,
                     until_us: int = 0, before: int = 0, after: int = 0, limit: int = 48,
                     thumbnails: bool = True) -> list[pb.FrameRecord]:
        """Newest first, whichever way the page goes (``after`` pages towards newer frames)."""
        req = pb.ListFramesRequest(camera_id=camera_id, class_name=class_name,
                                   since_us=since_us, until_us=until_us, limit=limit,
                                   include_thumbnails=thumbnails, newest_first=not after,
                                   before_frame_id=before, after_frame_id=after)
        frames = list((await self._call("ListFrames", req, "listing frames")).frames)
        return frames[::-1] if after else frames

    async def frame(self, camera_id: str, frame_id: int, *, image: bool = False,
                    thumbnail: bool = False) -> pb.GetFrameResponse:
        return await self._call("GetFrame", pb.GetFrameRequest(
            camera_id=camera_id, frame_id=frame_id, include_image=image,
            include_thumbnail=thumbnail), f"frame {frame_id} of camera {camera_id!r}",
            timeout=60.0 if image or thumbnail else None)

    async def human_view(self, camera_id: str, frame_id: int,
                         cached_only: bool = False) -> pb.GetHumanViewResponse:
        return await self._call("GetHumanView", pb.GetHumanViewRequest(
            camera_id=camera_id, frame_id=frame_id, cached_only=cached_only),
            f"human view of frame {frame_id}", timeout=self.human_timeout_s)

    async def change_settings(self, camera_id: str, base_model_id: str = "",
                              max_fps: float = 0.0) -> None:
        await self._call("ChangeSettings", pb.ChangeSettingsRequest(
            camera_id=camera_id, settings=pb.Settings(base_model_id=base_model_id,
                                                      max_fps=max_fps)),
            f"settings of camera {camera_id!r}")

    async def watch(self, camera_id: str = "", class_name: str = "",
                    idle_s: float = 15.0) -> AsyncIterator[pb.FrameRecord | None]:
        """Live frames; ``None`` after ``idle_s`` without one (the caller sends a keep-alive).
        A reader task feeds a queue so that waiting never cancels the stream itself."""
        call = self.stub.WatchDetections(pb.WatchDetectionsRequest(
            camera_id=camera_id, class_name=class_name, include_thumbnails=True),
            metadata=self.metadata)
        q: asyncio.Queue = asyncio.Queue(256)

        async def read() -> None:
            try:
                async for msg in call:
                    await q.put(msg.frame)
                await q.put(StopAsyncIteration())
            except grpc.RpcError as e:
                await q.put(from_rpc(e, "live detections"))
            except asyncio.CancelledError:
                pass

        reader = asyncio.create_task(read())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), idle_s)
                except asyncio.TimeoutError:
                    yield None
                    continue
                if isinstance(item, StopAsyncIteration):
                    return
                if isinstance(item, CloudError):
                    raise item
                yield item
        finally:
            call.cancel()
            reader.cancel()
