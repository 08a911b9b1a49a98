"""The ingest worker's own clocks: what it reports as commit time is the commit's, not the
database outage it may have waited through (ops read these to find where a frame's latency
goes; ``scripts/bench_cloud.py`` splits capture-to-ack with them)."""

from __future__ import annotations

import time

import numpy as np
import pytest


def test_commit_time_leaves_out_waiting_for_the_database(tmp_path) -> None:
    pytest.importorskip("grpc")
    from cloud_decoder.decoders import NoopDecoder
    from cloud_decoder.metrics import CloudMetrics
    from cloud_decoder.pipeline import IngestItem, IngestPipeline, now_us
    from cloud_decoder.sessions import EdgeSession
    from cloud_decoder.storage import StoreUnavailableError, open_store
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package
    from icm_rpc import pb

    codec = ScalableCodec.load(default_package("base"))
    rng = np.random.default_rng(0)
    layers = [codec.encode_base(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), frame_id=i)
              for i in (1, 2)]
    store = open_store(str(tmp_path / "c.sqlite3"))
    store.open_epoch("cam", "e1", now_us())
    real_add, stall = store.add_frames, 0.5
    failures = [1]

    def add_frames(rows):   # the first try hangs, then fails: a database that went away
        if failures[0]:
            failures[0] -= 1
            time.sleep(stall)
            raise StoreUnavailableError("database away (test)")
        return real_add(rows)

    store.add_frames = add_frames
    metrics = CloudMetrics()
    pipeline = IngestPipeline(store, NoopDecoder(), [], metrics, thumbnail_width=0)
    session = EdgeSession(pb.Hello(camera_id="cam", epoch="e1"), "test")
    items = [IngestItem(session, pb.BaseFrame(frame_id=i, layer=b, capture_time_us=now_us()),
                        now_us()) for i, b in enumerate(layers, 1)]
    rows = pipeline.process(items)
    assert [r.frame_id for r in rows] == [1, 2] and failures == [0]
    assert store.stored_ids("cam", [1, 2]) == {1, 2}       # stored after the retry
    count = metrics.registry.get_sample_value("icm_cloud_commit_seconds_count")
    total = metrics.registry.get_sample_value("icm_cloud_commit_seconds_sum")
    assert count == 1
    assert pipeline._waited >= stall          # the failed try and the backoff: waiting
    assert 0 < total < stall, total           # the commit that stored them: its own time
