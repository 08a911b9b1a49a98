"""The edge's enhancement responder on its own (no stream, no codec): every outcome, its
counter, and the one interface to the stream (``submit`` in, ``send`` out)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import pytest

from edge_encoder.link import EdgeLink
from edge_encoder.metrics import EdgeMetrics
from edge_encoder.responder import EnhancementResponder
from icm_rpc import pb


@dataclass
class Kept:
    base: bytes
    enhancement: bytes | None = None
    raw_png: bytes | None = None


class FakeSpool:
    def __init__(self, frames: dict[int, Kept]) -> None:
        self.frames = frames
        self.stored: dict[int, bytes] = {}

    def retained(self, frame_id: int) -> Kept | None:
        return self.frames.get(frame_id)

    def store_enhancement(self, frame_id: int, layer: bytes) -> None:
        self.stored[frame_id] = layer


class FakeEncoder:
    def encode_enhancement(self, raw_png: bytes, base: bytes) -> bytes:
        if raw_png == b"bad":
            raise ValueError("cannot encode")
        return b"E:" + raw_png + base


def _count(metrics: EdgeMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("icm_edge_enhancement_requests_total",
                                             {"outcome": outcome}) or 0.0


@pytest.mark.parametrize(("kept", "outcome", "layer", "error"), [
    (None, "not_retained", b"", "no longer retained"),
    (Kept(b"B", enhancement=b"eager"), "eager", b"eager", ""),
    (Kept(b"B", raw_png=b"png"), "lazy", b"E:pngB", ""),
    (Kept(b"B", raw_png=b"bad"), "error", b"", "cannot encode"),
    (Kept(b"B"), "unsupported", b"", "makes no enhancement layers"),
])
def test_each_outcome(kept, outcome, layer, error) -> None:
    spool = FakeSpool({7: kept} if kept else {})
    metrics = EdgeMetrics()
    r = EnhancementResponder(spool, FakeEncoder(), metrics, send=lambda m: None)
    resp = r.answer(pb.EnhancementRequest(request_id=3, frame_id=7))
    assert (resp.request_id, resp.frame_id) == (3, 7)
    assert resp.layer == layer and error in resp.error and bool(resp.error) == bool(error)
    assert _count(metrics, outcome) == 1
    # a lazily encoded layer is kept, so that a second request costs nothing
    assert spool.stored == ({7: layer} if outcome == "lazy" else {})


def test_submit_answers_through_send_off_the_callers_thread() -> None:
    got: queue.Queue[tuple[pb.EdgeMessage, str]] = queue.Queue()
    r = EnhancementResponder(FakeSpool({1: Kept(b"B", enhancement=b"L")}), FakeEncoder(),
                             EdgeMetrics(),
                             send=lambda m: got.put((m, threading.current_thread().name)))
    try:
        r.submit(pb.EnhancementRequest(request_id=9, frame_id=1))
        msg, thread = got.get(timeout=10)
    finally:
        r.close()
    assert msg.WhichOneof("body") == "enhancement"
    assert (msg.enhancement.request_id, msg.enhancement.layer) == (9, b"L")
    assert thread != threading.current_thread().name


def test_the_link_sends_the_responders_answers_up_its_stream() -> None:
    """EdgeLink wires the responder to its own ``send``: answers join the control messages
    that go ahead of pending frames (the stream is not started here)."""
    link = EdgeLink("cam", "127.0.0.1:1", FakeSpool({}), FakeEncoder(), EdgeMetrics())
    try:
        link.responder.submit(pb.EnhancementRequest(request_id=2, frame_id=5))
        msg = link._control.get(timeout=10)
    finally:
        link.responder.close()
    assert msg.enhancement.request_id == 2 and "no longer retained" in msg.enhancement.error
