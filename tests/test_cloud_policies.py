"""The cloud's policies: secure defaults (what it refuses to expose) and retention bounds."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest
from helpers import wait_for

from analytics.results import Detection
from cloud_decoder import CloudConfig, CloudServer
from cloud_decoder.analyst import detection_message
from cloud_decoder.server import InsecureConfigError, is_loopback
from cloud_decoder.storage import (
    DetectorRun,
    FrameQuery,
    FrameRow,
    RetentionPolicy,
    detections_from_json,
    detections_json,
    open_store,
)
from edge_encoder import EdgeConfig, EdgeService
from icm_rpc.tls import TLSFiles, make_ca, make_cert


# -- secure defaults ---------------------------------------------------------------------------
def test_loopback_addresses() -> None:
    for a in ("127.0.0.1:50051", "localhost:1", "[::1]:50051", "127.8.9.1:5", "unix:/tmp/s"):
        assert is_loopback(a), a
    for a in ("0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "cloud.example:443", ":50051"):
        assert not is_loopback(a), a


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d)
    make_cert(d, "cloud", server=True)
    return TLSFiles(d / "ca.pem", d / "cloud.pem", d / "cloud.key")


def test_exposed_without_protection_is_refused(tmp_path, pki) -> None:
    db = str(tmp_path / "c.sqlite3")
    with pytest.raises(InsecureConfigError, match=r"without TLS.*--insecure"):
        CloudServer(CloudConfig(listen="0.0.0.0:0", db=db, detectors=[]))
    with pytest.raises(InsecureConfigError, match=r"analyst API on 0\.0\.0\.0:0 without a token"):
        CloudServer(CloudConfig(listen="0.0.0.0:0", db=db, detectors=[], tls=pki))
    with pytest.raises(InsecureConfigError, match=r"analyst API on 0\.0\.0\.0:0"):
        CloudServer(CloudConfig(listen="127.0.0.1:0", analyst_listen="0.0.0.0:0", db=db,
                                detectors=[]))
    # protected, loopback, or explicitly insecure: it starts
    for cfg in (CloudConfig(listen="0.0.0.0:0", db=db, detectors=[], tls=pki,
                            analyst_token="t"),
                CloudConfig(listen="127.0.0.1:0", db=db, detectors=[]),
                CloudConfig(listen="0.0.0.0:0", db=db, detectors=[], insecure=True)):
        with CloudServer(cfg) as cloud:
            assert cloud.port > 0


def test_cli_refuses_and_says_how(tmp_path, capsys) -> None:
    from icm_app.main import main

    argv = ["cloud", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "c.sqlite3"),
            "--detectors", "none", "--metrics-port", "-1"]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(argv) == 2
    finally:  # the command points logging at this test's (soon closed) stderr
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert "refusing to take edge streams on 0.0.0.0:0 without TLS" in err and "--insecure" in err


# -- retention ---------------------------------------------------------------------------------
def _row(cam: str, fid: int, capture_us: int, nbytes: int, cls: str = "") -> FrameRow:
    dets = [Detection(0, cls, 0.9, (0.0, 0.0, 1.0, 1.0), model="yolo11n")] if cls else []
    return FrameRow(cam, fid, capture_us, capture_us, capture_us, 8, 8, nbytes, 0.1, dets,
                    b"x" * nbytes, "e", fid, base_model_id="base-x", base_digest="ab" * 16,
                    analysed_by=[DetectorRun("yolo11n", "yolo11n")])


# the detections column keeps the JSON shape every release has written
LEGACY_DETECTIONS = ('[{"class_id": 0, "class_name": "person", "score": 0.91234, "box_xyxy": '
                     '[1.5, 2.25, 30.0, 40.0], "mask_polygons": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], '
                     '"model": "yolo11n-seg"}, {"class_id": 2, "class_name": "car", "score": 0.5, '
                     '"box_xyxy": [0.0, 0.0, 8.0, 8.0], "model": "yolo11n"}]')


def test_stored_detections_keep_their_json_and_api_form(tmp_path) -> None:
    found = [Detection(0, "person", 0.912341, (1.5012, 2.2499, 30.0, 40.0),
                       [[1.02, 2.0, 3.0, 4.0, 5.0, 6.0]]).tagged("yolo11n-seg"),
             Detection(2, "car", 0.5, (0.0, 0.0, 8.0, 8.0)).tagged("yolo11n")]
    assert detections_json(found) == LEGACY_DETECTIONS
    db = tmp_path / "d.sqlite3"
    store = open_store(str(db))
    try:
        store.add_frames([FrameRow("cam", 1, 1, 1, 1, 8, 8, 1, 0.1, found, b"x")])
        with sqlite3.connect(db) as c:
            (raw,) = c.execute("SELECT detections FROM frames").fetchone()
        assert raw == LEGACY_DETECTIONS
        row = store.frame("cam", 1)
        assert row is not None and row.detections == found
    finally:
        store.close()
    msgs = [detection_message(d) for d in detections_from_json(LEGACY_DETECTIONS)]
    assert [(m.class_id, m.class_name, m.model) for m in msgs] == [
        (0, "person", "yolo11n-seg"), (2, "car", "yolo11n")]
    assert list(msgs[0].box) == pytest.approx([1.5, 2.25, 30.0, 40.0])
    assert msgs[0].score == pytest.approx(0.91234)
    assert [list(p.xy) for p in msgs[0].mask] == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    assert not msgs[1].mask


def test_retention_bounds_per_camera_oldest_first(tmp_path) -> None:
    store = open_store(str(tmp_path / "r.sqlite3"))
    try:
        now = 1_000_000_000_000
        for cam in ("a", "b"):
            store.open_epoch(cam, "e")
            store.add_frames([_row(cam, i, now - (10 - i) * 1_000_000, 100, "person")
                              for i in range(1, 11)])            # 10 frames, 1 s apart
            for i in (2, 8, 9, 10):
                store.put_human_view(cam, i, b"p" * 50, 7, now - (10 - i) * 1_000_000)
        # age: frames captured more than 5.5 s ago go (1..4), with their cached views
        got = store.apply_retention(RetentionPolicy(frame_age_s=5.5), now)
        assert got == {"frames": 8, "human_views": 2}
        for cam in ("a", "b"):
            assert [f.frame_id for f in store.frames(FrameQuery(cam))] == list(range(5, 11))
        assert [f.frame_id for f in store.frames(FrameQuery("a", class_name="person"))] == \
            list(range(5, 11))                                   # class index cleaned too
        analysed = store._all("SELECT frame_id FROM frame_analysis WHERE camera_id = 'a'", ())
        assert sorted(int(r[0]) for r in analysed) == list(range(5, 11))  # and what analysed them
        assert store.with_analysis(store.frames(FrameQuery("a")))[0].base_model_id == "base-x"
        # size: 350 bytes of base layers per camera keep the newest 3 frames (8, 9, 10)
        got = store.apply_retention(RetentionPolicy(frame_bytes=350), now)
        assert got["frames"] == 6
        assert [f.frame_id for f in store.frames(FrameQuery("b"))] == [8, 9, 10]
        assert store.usage("b") == (300, 150)
        # cached human views have bounds of their own: 120 bytes keep the newest two
        got = store.apply_retention(RetentionPolicy(human_view_bytes=120), now)
        assert got == {"frames": 0, "human_views": 2}
        assert store.human_view("a", 8) is None and store.human_view("a", 9) is not None
        assert store.frame("a", 8) is not None                    # the frame itself stays
        got = store.apply_retention(RetentionPolicy(human_view_age_s=0.5), now)
        assert got == {"frames": 0, "human_views": 2}             # frame 9 is 1 s old
        # ids are never reused: a new epoch starts after the high-water mark, not after the
        # surviving rows
        store.apply_retention(RetentionPolicy(frame_age_s=1e-6), now + 10**9)
        assert store.frames(FrameQuery("a")) == []
        assert store.open_epoch("a", "e2").offset == 10
        assert store.apply_retention(RetentionPolicy(), now) == {"frames": 0, "human_views": 0}
    finally:
        store.close()


def test_retention_runs_in_the_cloud(tmp_path) -> None:
    """A real edge streams six identical frames; the cloud's bound holds three and a half."""
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package

    frame = np.zeros((64, 64, 3), np.uint8)
    size = len(ScalableCodec.load(default_package("base")).encode_base(frame, frame_id=1))
    bound = int(3.5 * size)
    cfg = CloudConfig(listen="127.0.0.1:0", db=str(tmp_path / "c.sqlite3"), decoder="noop",
                      detectors=[], metrics_port=0, max_camera_frames_mb=bound / 2**20,
                      retention_interval_s=0.5)
    with CloudServer(cfg) as cloud:
        edge = EdgeService(EdgeConfig(camera_id="cam-r", cloud=f"127.0.0.1:{cloud.port}",
                                      spool_dir=tmp_path / "spool", enhancement_model=""))
        with edge:
            for _ in range(6):
                edge.capture_one(frame)
            assert edge.wait_drained(60)

        def within() -> bool:
            return 0 < cloud.store.usage("cam-r")[0] <= bound

        wait_for(within, 20, "retention to apply")
        assert cloud.metrics.retention_deleted.labels("frames")._value.get() == 3
    with sqlite3.connect(cfg.db) as c:
        ids = [r[0] for r in c.execute("SELECT frame_id FROM frames ORDER BY frame_id")]
    assert ids == [4, 5, 6]                                        # the newest stay
