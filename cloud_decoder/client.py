"""A small client of the analyst API (the ``icm analyst`` command, the demo and the tests use
it)."""

from __future__ import annotations

from collections.abc import Iterator

from icm_rpc import pb, pb_grpc
from icm_rpc.channels import open_channel
from icm_rpc.tls import TLSFiles, client_credentials

__all__ = ["AnalystClient", "Watch", "detection_summary"]


def detection_summary(frame: pb.FrameRecord) -> str:
    """A frame's detections counted per class, e.g. ``2 car, 1 person`` (``-`` for none)."""
    names: dict[str, int] = {}
    for d in frame.detections:
        names[d.class_name] = names.get(d.class_name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(names.items())) or "-"


class AnalystClient:
    def __init__(self, target: str, token: str = "", tls: TLSFiles | None = None,
                 server_name: str = "", timeout: float = 60.0) -> None:
        tls = tls or TLSFiles()
        self.channel = open_channel(target, client_credentials(tls) if tls.enabled else None,
                                    server_name)
        self.stub = pb_grpc.AnalystStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AnalystClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request):
        return getattr(self.stub, method)(request, timeout=self.timeout,
                                          metadata=self.metadata)

    def cameras(self) -> list[pb.Camera]:
        return list(self._call("ListCameras", pb.ListCamerasRequest()).cameras)

    def frames(self, camera_id: str = "", class_name: str = "", limit: int = 100,
               since_us: int = 0, until_us: int = 0,
               after_frame_id: int = 0) -> list[pb.FrameRecord]:
        req = pb.ListFramesRequest(camera_id=camera_id, class_name=class_name, limit=limit,
                                   since_us=since_us, until_us=until_us,
                                   after_frame_id=after_frame_id)
        return list(self._call("ListFrames", req).frames)

    def frame(self, camera_id: str, frame_id: int, image: bool = False) -> pb.GetFrameResponse:
        return self._call("GetFrame", pb.GetFrameRequest(camera_id=camera_id, frame_id=frame_id,
                                                         include_image=image))

    def human_view(self, camera_id: str, frame_id: int) -> pb.GetHumanViewResponse:
        return self._call("GetHumanView", pb.GetHumanViewRequest(camera_id=camera_id,
                                                                 frame_id=frame_id))

    def change_settings(self, camera_id: str, base_model_id: str = "",
                        max_fps: float = 0.0) -> None:
        self._call("ChangeSettings", pb.ChangeSettingsRequest(
            camera_id=camera_id, settings=pb.Settings(base_model_id=base_model_id,
                                                      max_fps=max_fps)))

    def watch(self, camera_id: str = "", class_name: str = "") -> Watch:
        """Live frames as the cloud stores them; ``cancel()`` ends the stream."""
        return Watch(self.stub.WatchDetections(
            pb.WatchDetectionsRequest(camera_id=camera_id, class_name=class_name),
            metadata=self.metadata))


class Watch:
    """An iterator of :class:`pb.FrameRecord` over a live ``WatchDetections`` stream."""

    def __init__(self, call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[pb.FrameRecord]:
        for msg in self._call:
            yield msg.frame

    def cancel(self) -> None:
        self._call.cancel()
