"""The database goes away mid-stream and comes back: a real PostgreSQL server (password
authentication) is stopped and started again under a running cloud process. Ingest pauses (the
edge keeps its frames), health says NOT_SERVING, analyst calls answer UNAVAILABLE, no message
carries the password, and ingest resumes by itself: every frame stored exactly once."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import PgServer, PgUnavailableError, free_port, wait_for

from cloud_decoder.client import AnalystClient
from edge_encoder import EdgeConfig, EdgeService

psycopg = pytest.importorskip("psycopg", reason="PostgreSQL store needs psycopg (cloud extra)")
pytest.importorskip("psycopg_pool", reason="PostgreSQL store needs psycopg_pool (cloud extra)")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def pg():
    try:
        server = PgServer(password=f"pw-{secrets.token_hex(8)}")
    except PgUnavailableError as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.cleanup()


def _health(port: int) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as e:
            return e.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def _stored(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT frame_id FROM frames WHERE camera_id = 'cam-db' ORDER BY frame_id")]


def test_postgres_restart_mid_stream(pg: PgServer, tmp_path: Path) -> None:
    from cloud_decoder.storage import open_store

    wrong = pg.url.replace(pg.password, "not-" + pg.password)
    with pytest.raises(ValueError, match="cannot connect to PostgreSQL") as e:
        open_store(wrong)
    assert pg.password not in str(e.value) and "icm:***@" in str(e.value)
    port, log = free_port(), tmp_path / "cloud.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cloud = subprocess.Popen(
        [sys.executable, "-m", "icm_codec.cli", "cloud", "--listen", f"127.0.0.1:{port}",
         "--db", pg.url, "--decoder", "noop", "--detectors", "none", "--metrics-port", "-1",
         "--threads", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=env)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(30)]
    try:
        wait_for(lambda: _health(port) == "SERVING", 120, "the cloud to serve")
        edge = EdgeService(EdgeConfig(camera_id="cam-db", cloud=f"127.0.0.1:{port}",
                                      spool_dir=tmp_path / "spool", enhancement_model=""))
        with edge, AnalystClient(f"127.0.0.1:{port}", timeout=20) as client:
            for f in frames[:10]:
                edge.capture_one(f)
            assert edge.wait_drained(60)
            assert _stored(pg.url) == list(range(1, 11))

            pg.stop()                                   # the database goes away
            for f in frames[10:20]:                     # the camera goes on capturing
                edge.capture_one(f)
            wait_for(lambda: _health(port) == "NOT_SERVING", 30, "health to say NOT_SERVING")
            time.sleep(2)
            assert edge.spool.pending_stats()[0] == 10  # nothing acked while it is away
            with pytest.raises(grpc.RpcError) as e:
                client.frames("cam-db")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert pg.password not in e.value.details()
            assert "***" in e.value.details()

            pg.start()                                  # back: no cloud restart
            assert edge.wait_drained(90), log.read_text()[-3000:]
            wait_for(lambda: _health(port) == "SERVING", 30, "health to say SERVING again")
            for f in frames[20:]:
                edge.capture_one(f)
            assert edge.wait_drained(60)
            assert [r.frame_id for r in client.frames("cam-db")] == list(range(1, 31))
        assert cloud.poll() is None                     # the same process all along
        assert _stored(pg.url) == list(range(1, 31))    # every frame exactly once
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(20)
        except subprocess.TimeoutExpired:
            cloud.kill()
    text = log.read_text()
    assert pg.password not in text
    assert re.search(r"ingest paused", text) and re.search(r"database is back", text), text
