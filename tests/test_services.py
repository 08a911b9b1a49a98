"""Edge encoder and cloud decoder over real gRPC sockets on loopback (and real processes where
the test is about a process dying)."""

from __future__ import annotations

import io
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import free_port, wait_for
from PIL import Image

from cloud_decoder import CloudConfig, CloudServer
from cloud_decoder.client import AnalystClient
from edge_encoder import EdgeConfig, EdgeService
from edge_encoder.spool import Spool
from icm_codec import ScalableCodec
from icm_codec.registry import default_package
from icm_rpc import pb, pb_grpc
from icm_rpc.tls import TLSFiles, make_ca, make_cert

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def frames(photos) -> list[np.ndarray]:
    """Small real photo crops: fast to encode, still real content."""
    base = np.asarray(Image.fromarray(photos[0]).resize((160, 128)))
    return [np.ascontiguousarray(np.roll(base, 7 * i, axis=1)) for i in range(12)]


@pytest.fixture(scope="module")
def codec() -> ScalableCodec:
    return ScalableCodec.load(default_package("base"), default_package("enhancement"))


@pytest.fixture()
def cloud(tmp_path):
    with CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "cloud.sqlite3"),
                                 detectors=[], metrics_port=0)) as server:
        yield server


def make_edge(tmp_path: Path, port: int, camera: str = "cam-1", **kw) -> EdgeService:
    return EdgeService(EdgeConfig(camera_id=camera, cloud=f"127.0.0.1:{port}",
                                  spool_dir=tmp_path / f"spool-{camera}", **kw))


def stored_ids(db: Path, camera: str = "cam-1") -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT frame_id FROM frames WHERE camera_id = ? ORDER BY frame_id", (camera,))]


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


# -- streaming ---------------------------------------------------------------------------------
def test_stream_stores_every_frame_and_acks(cloud, tmp_path, frames):
    with make_edge(tmp_path, cloud.port) as edge:
        ids = [edge.capture_one(f) for f in frames[:5]]
        assert edge.wait_drained(60)
        assert ids == [1, 2, 3, 4, 5]
    with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
        records = client.frames("cam-1")
        assert [r.frame_id for r in records] == ids
        for r in records:
            assert (r.width, r.height) == (160, 128)
            assert r.base_bytes > 0 and r.bpp == pytest.approx(8 * r.base_bytes / (160 * 128))
            assert r.stored_time_us >= r.arrival_time_us >= r.capture_time_us > 0
        cams = client.cameras()
        assert [c.camera_id for c in cams] == ["cam-1"] and cams[0].frames_stored == 5
        assert (cams[0].width, cams[0].height) == (160, 128)
    assert metric(cloud.metrics_server.port, "icm_cloud_frames_stored_total") == 5


@pytest.mark.shared
def test_detections_on_real_video(tmp_path, shared_dir):
    """The real detector on machine images of the real surveillance clip."""
    weights = shared_dir / "assets" / "detectors"
    video = shared_dir / "data" / "video" / "vtest.avi"
    cfg = CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "c.sqlite3"),
                      detectors=["yolo11n"], weights_dir=str(weights))
    with CloudServer(cfg) as cloud, make_edge(tmp_path, cloud.port, source=str(video),
                                              frames=3) as edge:
        assert edge.capture() == 3
        assert edge.wait_drained(120)
        with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
            records = client.frames("cam-1")
            assert len(records) == 3
            persons = [sum(d.class_name == "person" for d in r.detections) for r in records]
            assert all(n >= 2 for n in persons), persons  # several walkers in every frame
            assert {d.model for r in records for d in r.detections} == {"yolo11n"}
            assert [r.frame_id for r in client.frames(class_name="person")] == [1, 2, 3]
            assert client.frames(class_name="giraffe") == []


def test_watch_streams_live_frames_with_filters(cloud, tmp_path, frames):
    import threading

    got: dict[str, list[int]] = {"all": [], "cam-2": [], "person": []}
    with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
        streams = {"all": client.watch(), "cam-2": client.watch(camera_id="cam-2"),
                   "person": client.watch(class_name="person")}

        def drain(key: str) -> None:
            try:
                for fr in streams[key]:
                    got[key].append(fr.frame_id)
            except grpc.RpcError:
                pass  # cancelled at the end of the test

        threads = [threading.Thread(target=drain, args=(k,), daemon=True) for k in streams]
        for t in threads:
            t.start()
        wait_for(lambda: len(cloud.hub._subs) == 3, 10, "three watchers")
        with make_edge(tmp_path, cloud.port, "cam-1") as e1, \
                make_edge(tmp_path, cloud.port, "cam-2") as e2:
            e1.capture_one(frames[0])
            e2.capture_one(frames[1])
            e2.capture_one(frames[2])
            assert e1.wait_drained(60) and e2.wait_drained(60)
        wait_for(lambda: len(got["all"]) == 3 and len(got["cam-2"]) == 2, 10, "live frames")
        for s in streams.values():
            s.cancel()
    assert sorted(got["all"]) == [1, 1, 2] and got["cam-2"] == [1, 2]
    assert got["person"] == []  # no detector runs here: nothing matches a class filter


def test_human_view_is_the_codec_library_decode(cloud, tmp_path, frames, codec):
    with make_edge(tmp_path, cloud.port, enhancement_mode="lazy") as edge:
        for f in frames[:2]:
            edge.capture_one(f)
        assert edge.wait_drained(60)
        with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
            resp = client.human_view("cam-1", 2)
            assert not resp.cached and resp.enhancement_bytes > 0
            again = client.human_view("cam-1", 2)
            assert again.cached and again.png == resp.png
            machine = client.frame("cam-1", 2, image=True)
        kept = edge.spool.retained(2)
        assert kept is not None and kept.enhancement is not None  # lazily encoded, then kept
        expected_human = codec.decode_human(kept.base, kept.enhancement)
        expected_machine = codec.decode_machine(kept.base)
    human = np.asarray(Image.open(io.BytesIO(resp.png)))
    assert np.array_equal(human, expected_human)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(machine.machine_png))),
                          expected_machine)
    assert resp.total_bpp == pytest.approx(
        8 * (len(kept.base) + len(kept.enhancement)) / (160 * 128))


def test_eager_enhancement_is_encoded_at_capture(cloud, tmp_path, frames, codec):
    with make_edge(tmp_path, cloud.port, enhancement_mode="eager") as edge:
        edge.capture_one(frames[0])
        kept = edge.spool.retained(1)
        assert kept.enhancement is not None and kept.raw_png is None
        assert edge.wait_drained(60)
        with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
            resp = client.human_view("cam-1", 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(resp.png))),
                          codec.decode_human(kept.base, kept.enhancement))


# -- failures ----------------------------------------------------------------------------------
def _cloud_process(port: int, db: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "icm_app", "cloud", "--listen", f"127.0.0.1:{port}",
           "--db", str(db), "--detectors", "none", "--metrics-port", "-1", "--threads", "1"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO)


def _serving(port: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


@pytest.mark.slow
def test_cloud_killed_mid_stream_stores_every_frame_once(tmp_path, frames):
    port, db, log = free_port(), tmp_path / "cloud.sqlite3", tmp_path / "cloud.log"
    proc = _cloud_process(port, db, log)
    try:
        wait_for(lambda: _serving(port), 90, "the cloud process")
        with make_edge(tmp_path, port) as edge:
            edge.link.backoff.maximum = 1.0
            for f in frames[:6]:
                edge.capture_one(f)
            wait_for(lambda: len(stored_ids(db)) >= 2, 60, "first frames stored")
            proc.send_signal(signal.SIGKILL)  # mid-stream: some frames unacked or in flight
            proc.wait(10)
            for f in frames[6:]:
                edge.capture_one(f)  # the edge keeps capturing while the cloud is down
            assert edge.spool.pending_stats()[0] > 0
            proc = _cloud_process(port, db, log)
            assert edge.wait_drained(120), log.read_text()[-2000:]
            assert edge.metrics.reconnects._value.get() >= 1
    finally:
        proc.kill()
        proc.wait(10)
    assert stored_ids(db) == list(range(1, 13))


@pytest.mark.slow
def test_edge_killed_resumes_its_spool(tmp_path, frames, cloud):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, f in enumerate(frames[:4]):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    spool_dir = tmp_path / "spool-cam-1"
    dead = free_port()  # nothing listens: the edge spools and retries
    cmd = [sys.executable, "-m", "icm_app", "edge", "--camera-id", "cam-1", "--cloud",
           f"127.0.0.1:{dead}", "--source", str(folder), "--spool-dir", str(spool_dir),
           "--metrics-port", "-1", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        def spooled() -> int:
            try:
                with sqlite3.connect(spool_dir / "spool.sqlite3", timeout=1) as c:
                    return c.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
            except sqlite3.Error:
                return 0
        wait_for(lambda: spooled() == 4, 120, "the edge process to spool 4 frames")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    with make_edge(tmp_path, cloud.port) as edge:  # same spool dir: resumes
        assert edge.spool.pending_stats()[0] == 4
        assert edge.wait_drained(60)
        assert edge.capture_one(frames[5]) == 5  # ids keep increasing across restarts
        assert edge.wait_drained(60)
    assert stored_ids(Path(cloud.config.db)) == [1, 2, 3, 4, 5]


def test_failed_commit_is_not_acked_and_the_edge_resends(cloud, tmp_path, frames):
    real = cloud.store.add_frames
    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return real(rows)

    cloud.store.add_frames = flaky
    with make_edge(tmp_path, cloud.port) as edge:
        edge.link.backoff.maximum = 0.5
        edge.capture_one(frames[0])
        assert edge.wait_drained(60)
        assert edge.metrics.reconnects._value.get() >= 1
    assert calls["n"] >= 2
    assert stored_ids(Path(cloud.config.db)) == [1]


def test_offline_camera_is_unavailable(cloud, tmp_path, frames):
    with make_edge(tmp_path, cloud.port) as edge:
        edge.capture_one(frames[0])
        assert edge.wait_drained(60)
    wait_for(lambda: not cloud.sessions.get("cam-1"), 10, "the session to close")
    with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
        assert not client.cameras()[0].online
        with pytest.raises(grpc.RpcError) as e:
            client.human_view("cam-1", 1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as e:
            client.human_view("cam-1", 99)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_frame_no_longer_retained_is_not_found(cloud, tmp_path, frames):
    with make_edge(tmp_path, cloud.port, max_retained_mb=0.0) as edge:
        edge.capture_one(frames[0])
        assert edge.wait_drained(60)
        assert edge.spool.retained(1) is None
        with AnalystClient(f"127.0.0.1:{cloud.port}") as client, \
                pytest.raises(grpc.RpcError) as e:
            client.human_view("cam-1", 1)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no longer retained" in e.value.details()


def test_bad_token_is_unauthenticated(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cfg = CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "c.sqlite3"), detectors=[],
                      analyst_token="s3cret", metrics_port=0)
    with CloudServer(cfg) as cloud:
        target = f"127.0.0.1:{cloud.port}"
        for token in ("", "wrong"):
            with AnalystClient(target, token) as client, pytest.raises(grpc.RpcError) as e:
                client.cameras()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AnalystClient(target, "s3cret") as client:
            assert client.cameras() == []
            with pytest.raises(grpc.RpcError) as e:
                client.frame("nope", 1)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(target) as ch:  # health checks need no token
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        port = cloud.metrics_server.port
        assert metric(port, 'icm_cloud_rpc_errors_total{code="UNAUTHENTICATED"') == 2
        assert metric(port, 'icm_cloud_rpc_errors_total{code="NOT_FOUND"') == 1


def _hello_status(target: str, tls: TLSFiles, camera: str) -> grpc.StatusCode | str:
    from icm_rpc.tls import client_credentials

    with grpc.secure_channel(target, client_credentials(tls)) as ch:
        stream = pb_grpc.EdgeLinkStub(ch).Connect(
            iter([pb.EdgeMessage(hello=pb.Hello(camera_id=camera))]), timeout=20)
        try:
            return next(iter(stream)).WhichOneof("body")
        except grpc.RpcError as e:
            return e.code()


def test_mutual_tls_identity(tmp_path, frames):
    pki = tmp_path / "pki"
    make_ca(pki)
    make_cert(pki, "cloud", server=True)
    for cam in ("cam-a", "cam-b"):
        make_cert(pki, cam)
    other = tmp_path / "other"
    make_ca(other)
    make_cert(other, "cam-a")
    cfg = CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "c.sqlite3"), detectors=[],
                      tls=TLSFiles(pki / "ca.pem", pki / "cloud.pem", pki / "cloud.key"))
    with CloudServer(cfg) as cloud:
        target = f"localhost:{cloud.port}"
        a = TLSFiles(pki / "ca.pem", pki / "cam-a.pem", pki / "cam-a.key")
        b = TLSFiles(pki / "ca.pem", pki / "cam-b.pem", pki / "cam-b.key")
        assert _hello_status(target, a, "cam-a") == "welcome"
        assert _hello_status(target, b, "cam-a") == grpc.StatusCode.PERMISSION_DENIED
        stranger = TLSFiles(pki / "ca.pem", other / "cam-a.pem", other / "cam-a.key")
        assert _hello_status(target, stranger, "cam-a") == grpc.StatusCode.UNAVAILABLE
        # the real edge, over mutual TLS
        edge = EdgeService(EdgeConfig(camera_id="cam-a", cloud=target, tls=a,
                                      spool_dir=tmp_path / "spool"))
        with edge:
            edge.capture_one(frames[0])
            assert edge.wait_drained(60)


def test_corrupted_base_layer_is_rejected_and_counted(cloud, frames, codec):
    good = [codec.encode_base(f, frame_id=i) for i, f in enumerate(frames[:3], 1)]
    bad = bytearray(good[1])
    bad[len(bad) // 2] ^= 0x55
    msgs = [pb.EdgeMessage(hello=pb.Hello(camera_id="cam-x"))]
    msgs += [pb.EdgeMessage(frame=pb.BaseFrame(frame_id=i, capture_time_us=1, layer=data))
             for i, data in ((1, good[0]), (2, bytes(bad)), (3, good[2]), (4, b"garbage"))]
    got: list[pb.CloudMessage] = []

    def requests():
        yield from msgs
        wait_for(lambda: any(m.WhichOneof("body") == "ack" and m.ack.frame_id == 4
                             for m in got), 60, "ack of frame 4")

    with grpc.insecure_channel(f"127.0.0.1:{cloud.port}") as ch:
        for m in pb_grpc.EdgeLinkStub(ch).Connect(requests(), timeout=60):
            got.append(m)
            if m.WhichOneof("body") == "ack" and m.ack.frame_id == 4:
                break
    rejected = [m.rejected.frame_id for m in got if m.WhichOneof("body") == "rejected"]
    assert rejected == [2, 4]
    assert stored_ids(Path(cloud.config.db), "cam-x") == [1, 3]
    assert metric(cloud.metrics_server.port, "icm_cloud_frames_rejected_total") == 2


def test_edge_health_reports_the_stream(tmp_path, cloud):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    with make_edge(tmp_path, cloud.port, health_listen=f"127.0.0.1:{port}") as edge, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def status(service: str) -> int:
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("") == health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: status("icm.v1.EdgeLink") == health_pb2.HealthCheckResponse.SERVING,
                 30, "the edge to report its stream up")
        cloud.stop()
        wait_for(lambda: status("icm.v1.EdgeLink") == health_pb2.HealthCheckResponse.NOT_SERVING,
                 30, "the edge to report its stream down")
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # spooling goes on
        assert edge.capture_one(np.zeros((64, 64, 3), np.uint8)) == 1


def test_settings_switch_the_base_rate_point(cloud, tmp_path, frames):
    with make_edge(tmp_path, cloud.port) as edge:
        wait_for(edge.link.connected.is_set, 30, "connection")
        # the edge knows (and exports) the instance holding its stream: the Welcome's
        assert edge.link.cloud_instance == cloud.instance
        assert edge.metrics.registry.get_sample_value(
            "icm_edge_cloud_instance", {"instance": cloud.instance}) == 1
        before = edge.encoder.current
        other = next(m for m in edge.encoder.available_bases() if m != before)
        with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
            with pytest.raises(grpc.RpcError) as e:
                client.change_settings("cam-1", base_model_id="no-such-model")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            client.change_settings("cam-1", base_model_id=other)
            wait_for(lambda: edge.encoder.current == other, 30, "the switch")
            edge.capture_one(frames[0])
            assert edge.wait_drained(60)
            assert client.frames("cam-1")[0].frame_id == 1
            # the frame's header names the new model: the camera's base follows it
            (cam,) = client.cameras()
            assert cam.base_model_id == other != before
        with sqlite3.connect(cloud.config.db) as c:
            layer = c.execute("SELECT base_layer FROM frames").fetchone()[0]
            # in the database too: what other cloud instances answer ListCameras from
            assert c.execute("SELECT base_model_id FROM cameras WHERE camera_id = 'cam-1'"
                             ).fetchone()[0] == other
    from icm_codec.bitstream import unpack_layer

    assert unpack_layer(bytes(layer)).header.model_id == other


# -- the spool on its own ----------------------------------------------------------------------
def test_spool_bounds_and_drop_policy(tmp_path):
    spool = Spool(tmp_path / "s.sqlite3", "cam", max_bytes=250, max_retained_bytes=400)
    dropped = []
    for _ in range(5):
        dropped += spool.add(spool.next_frame_id(), int(time.time() * 1e6), bytes(100))
    assert dropped == [1, 2, 3]  # oldest first, to stay under 250 bytes
    assert spool.pending_stats() == (2, 200)
    assert [f.frame_id for f in spool.pending_after(0)] == [4, 5]
    assert spool.retained(1) is None and spool.retained(5) is not None
    assert spool.ack(4) == 1 and spool.pending_stats() == (1, 100)
    before = spool.retained_stats()[1]
    spool.store_enhancement(5, bytes(30))  # a lazily encoded layer counts towards the bound
    assert spool.retained_stats()[1] == before + 30
    spool.store_enhancement(5, bytes(30))  # kept once
    assert spool.retained_stats()[1] == before + 30
    spool.close()
    again = Spool(tmp_path / "s.sqlite3", "cam")
    assert again.next_frame_id() == 6
    with pytest.raises(ValueError, match="belongs to camera"):
        Spool(tmp_path / "s.sqlite3", "other-cam")


def test_cli_reports_missing_settings(tmp_path):
    from icm_app.main import main

    assert main(["edge", "--source", str(tmp_path)]) == 2
    assert main(["edge", "--camera-id", "c", "--source", str(tmp_path / "missing.avi")]) == 2
