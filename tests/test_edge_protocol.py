"""Peers that speak EdgeLink badly, over real gRPC sockets: each gets a status that says what
it did wrong, and none of them disturbs a well-behaved edge streaming at the same time."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from helpers import wait_for

from cloud_decoder import CloudConfig, CloudServer
from cloud_decoder.client import AnalystClient
from edge_encoder import EdgeConfig, EdgeService
from icm_codec import ScalableCodec
from icm_codec.registry import default_package
from icm_rpc import pb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def layers() -> list[bytes]:
    codec = ScalableCodec.load(default_package("base"))
    rng = np.random.default_rng(1)
    return [codec.encode_base(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), frame_id=i)
            for i in range(1, 4)]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    db = tmp_path_factory.mktemp("proto") / "c.sqlite3"
    with CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(db), decoder="noop",
                                 detectors=[], metrics_port=0, hello_timeout_s=1.0,
                                 heartbeat_s=0.5)) as server:
        yield server


def hello(camera: str) -> pb.EdgeMessage:
    return pb.EdgeMessage(hello=pb.Hello(camera_id=camera, epoch="e1"))


def frame(fid: int, layer: bytes) -> pb.EdgeMessage:
    return pb.EdgeMessage(frame=pb.BaseFrame(frame_id=fid, capture_time_us=1, layer=layer))


def exchange(port: int, messages: list, timeout: float = 20.0,
             raw: bool = False) -> tuple[list[str], grpc.StatusCode, str]:
    """Send ``messages`` (EdgeMessages, or bytes with ``raw``) and keep the stream open until
    the cloud ends it; returns the kinds of message received and the final status."""
    done = threading.Event()

    def requests():
        yield from messages
        done.wait(timeout)

    got: list[str] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.stream_stream(
            "/icm.v1.EdgeLink/Connect",
            request_serializer=(lambda b: b) if raw else pb.EdgeMessage.SerializeToString,
            response_deserializer=pb.CloudMessage.FromString)(requests(), timeout=timeout)
        try:
            for msg in call:
                got.append(msg.WhichOneof("body"))
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        finally:
            done.set()
    return got, code, details


def test_malformed_peers_get_clear_statuses(cloud, layers, tmp_path):
    port = cloud.port
    good = EdgeService(EdgeConfig(camera_id="good-cam", cloud=f"127.0.0.1:{port}",
                                  spool_dir=tmp_path / "good", enhancement_model=""))
    rng = np.random.default_rng(2)
    with good:
        stop = threading.Event()

        def stream_good() -> None:
            while not stop.is_set():
                good.capture_one(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                time.sleep(0.05)

        feeder = threading.Thread(target=stream_good, daemon=True)
        feeder.start()
        try:
            t0 = time.monotonic()
            assert exchange(port, [])[1:] == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                               "no Hello within 1 s of opening the stream")
            assert time.monotonic() - t0 < 10
            cases = [
                ([frame(1, layers[0])], grpc.StatusCode.INVALID_ARGUMENT, "must be a Hello"),
                ([pb.EdgeMessage(hello=pb.Hello(camera_id="bad\x00cam"))],
                 grpc.StatusCode.INVALID_ARGUMENT, "camera id"),
                ([pb.EdgeMessage(hello=pb.Hello(camera_id="c", epoch="x" * 65))],
                 grpc.StatusCode.INVALID_ARGUMENT, "epoch"),
                ([hello("p-back"), frame(2, layers[0]), frame(1, layers[1])],
                 grpc.StatusCode.INVALID_ARGUMENT, "must increase"),
                ([hello("p-zero"), frame(0, layers[0])],
                 grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
                ([hello("p-huge"), frame(1 << 60, layers[0])],
                 grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
                ([hello("p-hello2"), hello("p-hello2")],
                 grpc.StatusCode.INVALID_ARGUMENT, "one Hello"),
                ([hello("p-flood")] + [pb.EdgeMessage(enhancement=pb.EnhancementResponse(
                    request_id=1000 + i, layer=b"x" * 1000)) for i in range(200)],
                 grpc.StatusCode.INVALID_ARGUMENT, "never made"),
            ]
            for msgs, code, text in cases:
                _, got_code, details = exchange(port, msgs)
                assert (got_code, text in details) == (code, True), (msgs[:2], details)
            # bytes that are no EdgeMessage, first or later
            got = exchange(port, [b"\xff\xff\xff\x07garbage"], raw=True)
            assert got[1] == grpc.StatusCode.INVALID_ARGUMENT and "does not parse" in got[2]
            later = exchange(port, [hello("p-garbage").SerializeToString(), b"\x12\xff\xff"],
                             raw=True)
            assert later[0] == ["welcome"] and later[1] == grpc.StatusCode.INVALID_ARGUMENT
            # over the message size limit: gRPC's own check
            big = exchange(port, [hello("p-big"), frame(1, b"\0" * (65 << 20))])
            assert big[1] == grpc.StatusCode.RESOURCE_EXHAUSTED
            # frames sent before the Welcome are taken in order; a corrupt one is rejected
            kinds, code, _ = exchange(port, [hello("p-eager"), frame(1, layers[0]),
                                             frame(2, b"junk"), frame(3, layers[2])], timeout=3)
            assert kinds[0] == "welcome" and "rejected" in kinds and "ack" in kinds
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED   # our own deadline: it was fine
        finally:
            stop.set()
            feeder.join(10)
        assert good.wait_drained(60)
        sent = int(good.metrics.captured._value.get())
    with AnalystClient(f"127.0.0.1:{port}") as client:
        assert [f.frame_id for f in client.frames("good-cam", limit=10000)] == list(
            range(1, sent + 1))
        assert [f.frame_id for f in client.frames("p-eager")] == [1, 3]
        assert [f.frame_id for f in client.frames("p-back")] == [2]
    assert cloud.metrics.protocol_errors.labels("frame_id_order")._value.get() == 1
    assert cloud.metrics.protocol_errors.labels("unsolicited_enhancement")._value.get() == 1


def test_silent_edge_is_cut_off(cloud, layers):
    """An edge that announced heartbeats and then goes quiet (as behind a partition): its
    stream is closed after five intervals (tests/test_partition.py shows the human-view side)."""
    quiet = pb.EdgeMessage(hello=pb.Hello(camera_id="p-quiet", epoch="e1",
                                          capabilities=["heartbeat"],
                                          enhancement_model_id="enh"))
    t0 = time.monotonic()
    kinds, code, details = exchange(cloud.port, [quiet], timeout=30)
    assert code == grpc.StatusCode.UNAVAILABLE and "no message from the edge" in details
    assert 2.0 < time.monotonic() - t0 < 10
    assert kinds[0] == "welcome" and "heartbeat" in kinds      # the cloud's own heartbeats
    wait_for(lambda: cloud.sessions.get("p-quiet") is None, 10, "the session to go")
    assert cloud.metrics.silent_streams._value.get() >= 1


def test_settings_need_the_edges_capability(cloud):
    """ChangeSettings asks an edge only what its Hello lists (Hello.capabilities): one that
    does not list settings.base_model gets FAILED_PRECONDITION, one that does gets Settings."""
    got: dict[str, list[str]] = {}

    def edge(camera: str, capabilities: list[str]) -> threading.Thread:
        msg = pb.EdgeMessage(hello=pb.Hello(camera_id=camera, epoch="e1", base_models=["b2"],
                                            capabilities=capabilities))
        t = threading.Thread(target=lambda: got.setdefault(
            camera, exchange(cloud.port, [msg], timeout=6)[0]), daemon=True)
        t.start()
        return t

    threads = [edge("p-nocaps", ["heartbeat"]), edge("p-caps", ["settings.base_model"])]
    wait_for(lambda: cloud.sessions.get("p-nocaps") and cloud.sessions.get("p-caps"), 10,
             "both streams")
    with AnalystClient(f"127.0.0.1:{cloud.port}") as client:
        with pytest.raises(grpc.RpcError) as e:
            client.change_settings("p-nocaps", base_model_id="b2")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "settings.base_model" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            client.change_settings("p-caps", max_fps=5)           # listed: base model only
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        client.change_settings("p-caps", base_model_id="b2")
    for t in threads:
        t.join(15)
    assert "settings" in got["p-caps"] and "settings" not in got["p-nocaps"]


def test_frames_beyond_the_window_are_refused(cloud, layers):
    """A peer that never waits for acks: the cloud holds at most max_in_flight of its frames
    (here the pipeline is paused, so none is processed) and then ends the stream."""
    cloud.edge_link.max_in_flight = 4
    cloud.pipeline.stop()   # no frame is processed from here on (this test runs last)
    try:
        msgs = [hello("p-window")] + [frame(i, layers[0]) for i in range(1, 10)]
        _, code, details = exchange(port=cloud.port, messages=msgs)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "without waiting for acks" in details
    finally:
        cloud.edge_link.max_in_flight = 512
