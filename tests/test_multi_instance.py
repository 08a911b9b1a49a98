"""Several cloud instances sharing one PostgreSQL database: the camera -> instance record, and a
human-view request that lands on the instance without the camera's stream being forwarded to the
one that has it.

A throw-away PostgreSQL server is started for the module (initdb + pg_ctl on a free port in a
temporary folder, as the ``postgres`` user when the tests run as root). The test skips, saying
why, when the PostgreSQL server binaries or psycopg are missing (CI installs them: .ci/run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PgServer, PgUnavailableError, free_port

pytest.importorskip("grpc_health", reason="needs the cloud extra")
psycopg = pytest.importorskip("psycopg", reason="PostgreSQL store needs psycopg (cloud extra)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_url():
    try:
        server = PgServer()
    except PgUnavailableError as e:
        pytest.skip(str(e))
    try:
        yield server.url
    finally:
        server.cleanup()


# -- the store itself on PostgreSQL ---------------------------------------------------------------
def test_postgres_store_roundtrip(postgres_url: str) -> None:
    from analytics.results import Detection
    from cloud_decoder.storage import CameraRow, FrameQuery, FrameRow, RetentionPolicy, open_store

    a, b = open_store(postgres_url), open_store(postgres_url)   # two instances, one database
    try:
        a.upsert_camera(CameraRow("pg-cam", 96, 64, "base", "enh", "a:1", True, 5))
        frames = [FrameRow("pg-cam", i, 100 + i, 200 + i, 300 + i, 96, 64, 10, 0.01,
                           [Detection(0, "person", 0.9, (0.0, 0.0, 1.0, 1.0))]
                           if i % 2 else [],
                           base_layer=bytes([i]) * 10) for i in (1, 2, 3)]
        assert a.add_frames(frames) == [True, True, True]
        assert b.add_frames(frames[:1]) == [False]            # exactly once, across instances
        cam = b.camera("pg-cam")
        assert cam is not None and cam.online and cam.instance == "a:1"
        assert (cam.frames_stored, cam.last_frame_id) == (3, 3)
        assert b.last_frame_id("pg-cam") == 3
        row = b.frame("pg-cam", 3, with_layer=True)
        assert row is not None and row.base_layer == bytes([3]) * 10
        assert [f.frame_id for f in b.frames(FrameQuery("pg-cam", class_name="person"))] == [1, 3]
        assert [f.frame_id for f in b.frames(FrameQuery("pg-cam", after_frame_id=1,
                                                         limit=1))] == [2]
        b.put_human_view("pg-cam", 3, b"png", 42)
        b.put_human_view("pg-cam", 3, b"other", 1)             # first one wins
        assert a.human_view("pg-cam", 3) == (b"png", 42)
        a.set_base_models({"pg-cam": "base-2"})               # the edge switched (A saw it)
        assert b.camera("pg-cam").base_model_id == "base-2"
        b.set_offline("pg-cam", "b:1", 9)                      # not b's camera: no change
        assert a.camera("pg-cam").online
        a.mark_instance_offline("a:1")
        assert not b.camera("pg-cam").online
        # epochs and retention use the same SQL on PostgreSQL
        assert a.open_epoch("pg-cam", "e1").offset == 3
        assert not b.open_epoch("pg-cam", "").newest          # the legacy epoch, superseded
        assert a.stored_ids("pg-cam", [1, 2, 9]) == {1, 2}
        got = b.apply_retention(RetentionPolicy(frame_bytes=15), now_us=10**6)
        assert got == {"frames": 2, "human_views": 0}
        assert [f.frame_id for f in a.frames(FrameQuery("pg-cam"))] == [3]
        assert b.apply_retention(RetentionPolicy(human_view_bytes=1), 10**6)["human_views"] == 1
    finally:
        a.close()
        b.close()


# -- two cloud processes, one edge ---------------------------------------------------------------
_CLOUD = """
import sys
from cloud_decoder.server import CloudConfig, serve
db, listen, advertise, token = sys.argv[1:5]
serve(CloudConfig(listen=listen, db=db, decoder="codec", detectors=[], advertise=advertise,
                  analyst_token=token, metrics_port=None, threads=1, max_workers=16))
"""


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ICM_LOG_LEVEL": "warning"}
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=log.parent)


def _wait_for(log: Path, proc: subprocess.Popen, pattern: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {log.name}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _video(path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    yy, xx = np.mgrid[0:64, 0:96]
    for i in range(3):
        img = np.stack([(xx * 2 + i * 20) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
        w.write(img.astype(np.uint8))
    w.release()
    return path


def test_human_view_is_forwarded_to_the_instance_holding_the_stream(
        postgres_url: str, tmp_path: Path) -> None:
    import grpc

    from cloud_decoder.client import AnalystClient
    from cloud_decoder.forwarding import FORWARDED_HEADER
    from icm_rpc import pb, pb_grpc

    token = "multi-instance-token"
    port_a, port_b = free_port(), free_port()
    addr_a, addr_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    procs = []
    try:
        for name, addr in (("a", addr_a), ("b", addr_b)):
            log = tmp_path / f"cloud-{name}.log"
            procs.append((_spawn([sys.executable, "-c", _CLOUD, postgres_url, addr, addr, token],
                                 log), log))
        for proc, log in procs:
            _wait_for(log, proc, r"listening on port")
        edge_log = tmp_path / "edge.log"
        edge = _spawn([sys.executable, "-m", "icm_app", "edge", "--camera-id", "cam-x",
                       "--cloud", addr_a, "--source", str(_video(tmp_path / "v.avi")),
                       "--frames", "3", "--spool-dir", str(tmp_path / "spool"),
                       "--metrics-port", "-1", "--threads", "1"], edge_log)
        procs.append((edge, edge_log))

        with AnalystClient(addr_b, token, timeout=90) as b, \
                AnalystClient(addr_a, token, timeout=90) as a:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:       # the edge's frames stored (via A)
                cams = {c.camera_id: c for c in b.cameras()}
                if "cam-x" in cams and cams["cam-x"].last_frame_id >= 2:
                    break
                assert edge.poll() is None, edge_log.read_text()[-3000:]
                time.sleep(0.5)
            cam = {c.camera_id: c for c in b.cameras()}["cam-x"]
            assert cam.online and cam.instance == addr_a, cam

            # B has no stream of cam-x: it forwards to A, which asks the edge
            r = b.human_view("cam-x", 2)
            assert r.png.startswith(b"\x89PNG") and r.enhancement_bytes > 0 and not r.cached
            # stored in the shared database: B answers the next one itself
            assert b.human_view("cam-x", 2).cached
            assert a.human_view("cam-x", 2).cached

            # the caller's token is what authorizes the forwarded call on A
            bad = pb_grpc.AnalystStub(b.channel)
            with pytest.raises(grpc.RpcError) as e:
                bad.GetHumanView(pb.GetHumanViewRequest(camera_id="cam-x", frame_id=1),
                                 timeout=30, metadata=(("authorization", "Bearer wrong"),))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # an already forwarded call is not forwarded again (no loops between instances)
            with pytest.raises(grpc.RpcError) as e:
                bad.GetHumanView(pb.GetHumanViewRequest(camera_id="cam-x", frame_id=1),
                                 timeout=30, metadata=(("authorization", f"Bearer {token}"),
                                                       (FORWARDED_HEADER, "test")))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            # the caller's deadline bounds the forwarded call
            with pytest.raises(grpc.RpcError) as e:
                bad.GetHumanView(pb.GetHumanViewRequest(camera_id="cam-x", frame_id=3),
                                 timeout=0.001, metadata=b.metadata)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            # what only A knows (the edge's Hello) reaches B's callers through A: the base
            # models of one camera, and settings changes (the web console's settings page)
            one_b = bad.ListCameras(pb.ListCamerasRequest(camera_id="cam-x"), timeout=30,
                                    metadata=b.metadata).cameras
            one_a = pb_grpc.AnalystStub(a.channel).ListCameras(
                pb.ListCamerasRequest(camera_id="cam-x"), timeout=30, metadata=a.metadata).cameras
            assert [c.camera_id for c in one_b] == ["cam-x"]
            assert one_b[0].base_models and list(one_b[0].base_models) == list(
                one_a[0].base_models)
            other = next(m for m in one_b[0].base_models if m != cam.base_model_id)
            b.change_settings("cam-x", base_model_id=other)       # forwarded: A has the stream
            with pytest.raises(grpc.RpcError) as e:
                b.change_settings("cam-x", base_model_id="no-such-model")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT   # A's answer
            assert "via instance" in e.value.details()

            # the edge goes away: the camera is offline everywhere, B answers UNAVAILABLE
            _stop(edge)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and {
                    c.camera_id: c for c in b.cameras()}["cam-x"].online:
                time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as e:
                b.human_view("cam-x", 1)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for proc, _ in reversed(procs):
            _stop(proc)


def test_forwarding_over_tls_with_shared_certificate(tmp_path: Path) -> None:
    """Peers are dialled by IP and verified against the name of the instance's own (shared)
    certificate; the caller's token authorizes the call on the peer. SQLite shared by two
    in-process instances stands in for PostgreSQL here."""
    import grpc

    from cloud_decoder.server import CloudConfig, CloudServer
    from cloud_decoder.storage import CameraRow, FrameRow
    from icm_rpc import pb, pb_grpc
    from icm_rpc.tls import TLSFiles, make_ca, make_cert

    ca, _ = make_ca(tmp_path / "ca")
    cert, key = make_cert(tmp_path / "ca", "icm-cloud", server=True, hosts=("peers.example",))
    tls = TLSFiles(ca=ca, cert=cert, key=key)
    db = str(tmp_path / "shared.sqlite3")
    ports = [free_port() for _ in range(4)]
    servers = []
    try:
        for i in (0, 1):
            servers.append(CloudServer(CloudConfig(
                listen=f"127.0.0.1:{ports[2 * i]}", analyst_listen=f"127.0.0.1:{ports[2 * i + 1]}",
                db=db, decoder="noop", detectors=[], analyst_token="tok", tls=tls,
                advertise=f"127.0.0.1:{ports[2 * i + 1]}", max_workers=16)).start())
        a, b = servers
        a.store.upsert_camera(CameraRow("cam-t", 8, 8, "m", "", a.instance, True, 1))
        a.store.add_frames([FrameRow("cam-t", 1, 1, 1, 1, 8, 8, 1, 0.1, [], base_layer=b"x")])
        creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(b.instance, creds,
                                 [("grpc.ssl_target_name_override", "icm-cloud")]) as ch:
            stub = pb_grpc.AnalystStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.GetHumanView(pb.GetHumanViewRequest(camera_id="cam-t", frame_id=1),
                                  timeout=20, metadata=(("authorization", "Bearer tok"),))
        # A answered (it has no codec: FAILED_PRECONDITION), and B passed that on
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
        assert f"via instance {a.instance}" in e.value.details()
    finally:
        for s in servers:
            s.stop(grace=0.5)
