"""Frame identity across lost spools: an edge that restarts with an empty spool while the cloud
is unreachable starts its ids again from 1; the spool's epoch keeps those frames apart from the
ones stored before, so none is lost and none stored twice. Real cloud server on a real socket,
real edges, real codec."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import free_port, wait_for
from PIL import Image

from cloud_decoder import CloudConfig, CloudServer
from cloud_decoder.client import AnalystClient
from cloud_decoder.storage import FrameRow, open_store
from edge_encoder import EdgeConfig, EdgeService
from edge_encoder.spool import Spool
from icm_rpc import pb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames(photos) -> list[np.ndarray]:
    base = np.asarray(Image.fromarray(photos[1]).resize((96, 64)))
    return [np.ascontiguousarray(np.roll(base, 3 * i, axis=1)) for i in range(60)]


def _cloud(port: int, db: Path) -> CloudServer:
    return CloudServer(CloudConfig(listen=f"127.0.0.1:{port}", db=str(db), detectors=[],
                                   instance="cloud-test")).start()


def _edge(port: int, spool: Path) -> EdgeService:
    edge = EdgeService(EdgeConfig(camera_id="cam-1", cloud=f"127.0.0.1:{port}", spool_dir=spool))
    edge.link.backoff.maximum = 0.5
    return edge  # `with` starts it


def _rows(db: Path) -> list[tuple[int, str, int, int]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT frame_id, epoch, edge_frame_id, capture_us FROM frames WHERE "
                         "camera_id = 'cam-1' ORDER BY frame_id").fetchall()


def _capture(edge: EdgeService, frames: list[np.ndarray]) -> list[int]:
    return [edge.capture_one(f) for f in frames]


def test_fresh_spool_during_an_outage_loses_nothing(tmp_path, frames):
    """The issue's scenario: 30 frames, then the edge restarts with a fresh spool while the
    cloud is down and captures 20 more; all 50 are stored once, in capture order."""
    port, db = free_port(), tmp_path / "cloud.sqlite3"
    cloud = _cloud(port, db)
    try:
        with _edge(port, tmp_path / "spool-a") as edge:
            assert _capture(edge, frames[:30]) == list(range(1, 31))
            assert edge.wait_drained(60)
            old_epoch = edge.spool.epoch
    finally:
        cloud.stop()
    with _edge(port, tmp_path / "spool-b") as edge:           # a new disk: an empty spool
        new_epoch = edge.spool.epoch
        assert new_epoch and new_epoch != old_epoch
        assert _capture(edge, frames[30:50]) == list(range(1, 21))
        assert edge.spool.pending_stats()[0] == 20             # the cloud is unreachable
        cloud = _cloud(port, db)
        try:
            assert edge.wait_drained(60)
            rows = _rows(db)
            assert [r[0] for r in rows] == list(range(1, 51))   # none lost, none twice
            assert [(r[1], r[2]) for r in rows] == (
                [(old_epoch, i) for i in range(1, 31)] + [(new_epoch, i) for i in range(1, 21)])
            captures = [r[3] for r in rows]
            assert captures == sorted(captures)                 # ids follow capture time
            with AnalystClient(f"127.0.0.1:{port}") as client:
                listed = client.frames("cam-1", limit=100)
                assert [f.frame_id for f in listed] == list(range(1, 51))
                assert listed[0].edge_epoch == old_epoch and listed[0].edge_frame_id == 1
                assert listed[35].edge_epoch == new_epoch and listed[35].edge_frame_id == 6
                # the old spool is gone: its frames have no enhancement at the edge any more
                states = {f.frame_id: f.enhancement for f in listed}
                assert {states[i] for i in range(1, 31)} == {pb.ENHANCEMENT_EXPIRED}
                assert {states[i] for i in range(31, 51)} == {pb.ENHANCEMENT_AT_EDGE}
                with pytest.raises(grpc.RpcError) as e:
                    client.human_view("cam-1", 12)
                assert e.value.code() == grpc.StatusCode.NOT_FOUND
                assert "earlier spool" in e.value.details()
                # a frame of the new spool: the request carries the edge's own id (6)
                view = client.human_view("cam-1", 36)
                assert view.png.startswith(b"\x89PNG") and view.enhancement_bytes > 0
                assert client.frame("cam-1", 36).frame.enhancement == pb.ENHANCEMENT_CACHED
            assert edge.capture_one(frames[50]) == 21
            assert edge.wait_drained(60)
            assert _rows(db)[-1][:3] == (51, new_epoch, 21)
        finally:
            cloud.stop()


def test_old_spool_coming_back_starts_a_new_epoch(tmp_path, frames):
    """A spool superseded by a newer one (the old camera box returns with unacked frames):
    its ids would collide with the newer epoch's; the cloud has it start a new epoch, and its
    frames are stored once, after the others."""
    port, db = free_port(), tmp_path / "cloud.sqlite3"
    cloud = _cloud(port, db)
    with _edge(port, tmp_path / "spool-old") as edge:
        _capture(edge, frames[:10])
        assert edge.wait_drained(60)
        old_epoch = edge.spool.epoch
    cloud.stop()
    with _edge(port, tmp_path / "spool-old") as edge:          # offline: 5 frames spooled
        assert _capture(edge, frames[10:15]) == [11, 12, 13, 14, 15]
    cloud = _cloud(port, db)
    try:
        with _edge(port, tmp_path / "spool-new") as edge:      # the replacement box
            _capture(edge, frames[15:23])
            assert edge.wait_drained(60)
            new_epoch = edge.spool.epoch
        with _edge(port, tmp_path / "spool-old") as edge:      # the old box returns
            assert edge.wait_drained(60)
            renewed = edge.spool.epoch
            assert renewed not in (old_epoch, new_epoch)
            assert edge.capture_one(frames[23]) == 16           # its ids just go on
            assert edge.wait_drained(60)
    finally:
        cloud.stop()
    rows = _rows(db)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 10 + 8 + 6
    assert [(r[1], r[2]) for r in rows] == (
        [(old_epoch, i) for i in range(1, 11)] + [(new_epoch, i) for i in range(1, 9)]
        + [(renewed, i) for i in range(11, 17)])
    assert ids[:18] == list(range(1, 19)) and ids[18:] == list(range(18 + 11, 18 + 17))


def test_databases_and_spools_from_before_epochs(tmp_path):
    """Upgrade: an existing database gets the new columns, its frames become the legacy epoch
    "", which an existing spool (no epoch in it) continues; a fresh spool gets new ids."""
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as c:
        c.executescript("""
            CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, width INTEGER NOT NULL DEFAULT 0,
                height INTEGER NOT NULL DEFAULT 0, base_model_id TEXT NOT NULL DEFAULT '',
                enhancement_model_id TEXT NOT NULL DEFAULT '', instance TEXT NOT NULL DEFAULT '',
                online INTEGER NOT NULL DEFAULT 0, last_seen_us BIGINT NOT NULL DEFAULT 0);
            CREATE TABLE frames (camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL,
                capture_us BIGINT NOT NULL, arrival_us BIGINT NOT NULL,
                stored_us BIGINT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
                base_bytes INTEGER NOT NULL, bpp DOUBLE PRECISION NOT NULL,
                base_layer BLOB NOT NULL, detections TEXT NOT NULL,
                PRIMARY KEY (camera_id, frame_id));
            CREATE TABLE human_views (camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL,
                png BLOB NOT NULL, enhancement_bytes INTEGER NOT NULL,
                PRIMARY KEY (camera_id, frame_id));
            INSERT INTO frames VALUES ('cam', 1, 10, 11, 12, 8, 8, 3, 0.1, x'000102', '[]');
            INSERT INTO frames VALUES ('cam', 2, 20, 21, 22, 8, 8, 3, 0.1, x'000102', '[]');
            INSERT INTO human_views VALUES ('cam', 2, x'89504e47', 7);
        """)
    store = open_store(str(db))
    try:
        row = store.frame("cam", 2)
        assert row is not None and (row.epoch, row.edge_frame_id) == ("", 2)
        assert row.human_view_cached
        legacy = store.open_epoch("cam", "")
        assert (legacy.offset, legacy.last_frame_id, legacy.newest) == (0, 2, True)
        store.add_frames([FrameRow("cam", 3, 30, 31, 32, 8, 8, 3, 0.1, [], b"abc", "", 3)])
        assert store.open_epoch("cam", "").last_frame_id == 3
        fresh = store.open_epoch("cam", "e1")
        assert (fresh.offset, fresh.last_frame_id, fresh.newest) == (3, 0, True)
        assert not store.open_epoch("cam", "").newest
        assert store.usage("cam") == (9, 4)
    finally:
        store.close()
    spool_db = tmp_path / "spool.sqlite3"
    with sqlite3.connect(spool_db) as c:
        c.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                        "INSERT INTO meta VALUES ('camera_id', 'cam'), ('next_frame_id', '4');")
    spool = Spool(spool_db, "cam")
    assert spool.epoch == "" and spool.next_frame_id() == 4
    spool.close()
    fresh_spool = Spool(tmp_path / "fresh.sqlite3", "cam")
    assert len(fresh_spool.epoch) == 16 and fresh_spool.retained_from() == 1
    fresh_spool.close()
    again = Spool(tmp_path / "fresh.sqlite3", "cam")
    assert again.epoch == fresh_spool.epoch                    # the epoch lives in the spool
    again.close()


def test_edge_restarts_are_seamless_within_an_epoch(tmp_path, frames):
    """The same spool across restarts keeps its epoch: ids simply go on (no new offset)."""
    port, db = free_port(), tmp_path / "cloud.sqlite3"
    cloud = _cloud(port, db)
    try:
        for k in range(2):
            with _edge(port, tmp_path / "spool") as edge:
                _capture(edge, frames[3 * k:3 * k + 3])
                assert edge.wait_drained(60)
        wait_for(lambda: len(_rows(db)) == 6, 10, "six frames")
    finally:
        cloud.stop()
    rows = _rows(db)
    assert [(r[0], r[2]) for r in rows] == [(i, i) for i in range(1, 7)]
    assert len({r[1] for r in rows}) == 1
