"""Answers the cloud's enhancement-layer requests (a human view of a frame).

The stream (:class:`edge_encoder.link.EdgeLink`) hands each ``EnhancementRequest`` it reads to
:meth:`EnhancementResponder.submit` and gets the ``EnhancementResponse`` back through the
``send`` callable it gave the responder; that pair is the whole interface between them. The
answer is made off the stream's reader thread (a lazy enhancement layer is encoded on request,
which takes a while) and one at a time (encoding is the edge's heaviest work):

- the frame's enhancement layer, when it was encoded eagerly (``eager``);
- encoded now from the retained source image, and kept for the next request (``lazy``);
- else an error: no longer retained (``not_retained``), encoding failed (``error``), or this
  edge makes no enhancement layers (``unsupported``).

Each outcome is counted in ``icm_edge_enhancement_requests_total``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from icm_rpc import pb

from .encoder import EdgeEncoder
from .metrics import EdgeMetrics
from .spool import Spool

__all__ = ["EnhancementResponder"]


class EnhancementResponder:
    """Args:
        send: queues a message to go up the stream (the link's :meth:`EdgeLink.send`).
    """

    def __init__(self, spool: Spool, encoder: EdgeEncoder, metrics: EdgeMetrics,
                 send: Callable[[pb.EdgeMessage], None]) -> None:
        self.spool = spool
        self.encoder = encoder
        self.metrics = metrics
        self.send = send
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-enh")

    def submit(self, req: pb.EnhancementRequest) -> None:
        """Answer ``req`` in the background; the response goes to ``send``."""
        self._pool.submit(self._respond, req)

    def close(self) -> None:
        """Drop requests not yet started (the stream is going away)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _respond(self, req: pb.EnhancementRequest) -> None:
        self.send(pb.EdgeMessage(enhancement=self.answer(req)))

    def answer(self, req: pb.EnhancementRequest) -> pb.EnhancementResponse:
        """The response to ``req`` (counted by outcome)."""
        resp = pb.EnhancementResponse(request_id=req.request_id, frame_id=req.frame_id)
        kept = self.spool.retained(req.frame_id)
        if kept is None:
            resp.error = f"frame {req.frame_id} is no longer retained at the edge"
            outcome = "not_retained"
        elif kept.enhancement is not None:
            resp.layer = kept.enhancement
            outcome = "eager"
        elif kept.raw_png is not None:
            try:
                resp.layer = self.encoder.encode_enhancement(kept.raw_png, kept.base)
                self.spool.store_enhancement(req.frame_id, resp.layer)
                outcome = "lazy"
            except (ValueError, RuntimeError) as e:
                resp.error = str(e)
                outcome = "error"
        else:
            resp.error = "this edge makes no enhancement layers"
            outcome = "unsupported"
        self.metrics.enhancement_requests.labels(outcome).inc()
        return resp
