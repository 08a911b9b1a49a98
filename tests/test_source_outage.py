"""A network camera that drops and comes back: a real MJPEG-over-HTTP stream (what many IP
cameras serve) read through OpenCV/FFmpeg, switched off and on again on the same port. The edge
reopens it with backoff, its stall detector turns health NOT_SERVING while no frame comes, and
capture resumes by itself; every captured frame reaches the cloud."""

from __future__ import annotations

import http.server
import io
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import free_port, wait_for
from PIL import Image

from cloud_decoder import CloudConfig, CloudServer
from edge_encoder import EdgeConfig, EdgeService
from edge_encoder.sources import FrameSource

pytest.importorskip("cv2", reason="video sources need opencv (edge extra)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MjpegCamera:
    """An endless multipart/x-mixed-replace JPEG stream at ~20 frames/s; :meth:`stop` cuts
    every connection and closes the port, :meth:`start` opens it again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: http.server.ThreadingHTTPServer | None = None
        self.off = threading.Event()

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=frame")
                self.end_headers()
                i = 0
                while not camera.off.is_set():
                    buf = io.BytesIO()
                    Image.fromarray(np.full((64, 96, 3), (i * 20) % 255, np.uint8)).save(
                        buf, format="JPEG")
                    part = buf.getvalue()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(part) + part
                                         + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    i += 1
                    time.sleep(0.05)

            def log_message(self, *args) -> None:
                pass

        self.off.clear()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.off.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _health(port: int, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def test_camera_drop_stalls_then_capture_resumes(tmp_path) -> None:
    camera = MjpegCamera(free_port())
    camera.start()
    hport = free_port()
    cfg = CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "c.sqlite3"), decoder="noop",
                      detectors=[])
    with CloudServer(cfg) as cloud:
        edge = EdgeService(EdgeConfig(
            camera_id="ipcam", cloud=f"127.0.0.1:{cloud.port}",
            source=f"http://127.0.0.1:{camera.port}/stream.mjpg", max_fps=10, stall_s=1.5,
            health_listen=f"127.0.0.1:{hport}", enhancement_model="",
            spool_dir=tmp_path / "spool"))
        with edge:
            capture = threading.Thread(target=edge.capture, daemon=True)
            capture.start()
            m = edge.metrics
            try:
                wait_for(lambda: m.captured._value.get() >= 5, 60, "frames from the camera")
                assert _health(hport) == "SERVING"

                camera.stop()                                  # the camera drops
                wait_for(lambda: _health(hport) == "NOT_SERVING", 15, "the stall to show")
                assert m.capture_stalls._value.get() == 1 and m.capture_up._value.get() == 0
                assert m.source_events.labels("lost")._value.get() >= 1
                wait_for(lambda: m.source_events.labels("open_failed")._value.get() >= 1, 15,
                         "a failed reopen while the camera is away")
                before = m.captured._value.get()

                camera.start()                                 # and comes back
                wait_for(lambda: m.captured._value.get() >= before + 5, 60,
                         "capture to resume")
                assert _health(hport) == "SERVING"
                assert m.capture_up._value.get() == 1
                assert m.source_events.labels("reopened")._value.get() >= 1
            finally:
                edge.source.close()                            # ends a reopen backoff too
                capture.join(15)
                camera.stop()
            assert not capture.is_alive()
            captured = int(m.captured._value.get())
            assert edge.wait_drained(60)
        assert len(cloud.store.frames(_query("ipcam"))) == captured


def _query(camera: str):
    from cloud_decoder.storage import FrameQuery

    return FrameQuery(camera_id=camera, limit=10000)


def test_file_sources_end_and_live_sources_redact_passwords(tmp_path, caplog) -> None:
    """A file ends (no reopen); a URL that cannot be opened is retried, its password never
    logged."""
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(3):
        w.write(np.full((32, 32, 3), i * 40, np.uint8))
    w.release()
    assert len(list(FrameSource(str(video)))) == 3
    events: list[str] = []
    src = FrameSource(f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream",
                      on_event=events.append, io_timeout_s=1)
    assert src.live and "hunter2" not in src.name
    threading.Timer(3.0, src.close).start()
    with caplog.at_level("WARNING", logger="icm.edge"):
        assert list(src) == []                              # closed while retrying
    assert events.count("open_failed") >= 2
    assert "cannot open source rtsp://admin:***@" in caplog.text
    assert "hunter2" not in caplog.text
