"""Forwarding analyst calls between cloud instances.

With several instances behind one address, an analyst's ``GetHumanView`` may land on an
instance that does not hold the camera's stream (the enhancement layer can only be asked of the
edge through that stream). Each instance records ``camera -> instance`` in the shared database,
the instance name being its *advertised* analyst address; the receiving instance forwards the
call there::

    analyst ──GetHumanView──> instance B ──(camera row: online on A)──> instance A ──> edge
                                   <────────────── response ─────────────────┘

The caller's ``authorization`` metadata goes along (every instance checks the same token), the
caller's remaining deadline bounds the forwarded call, and a forwarded call is never forwarded
again (``icm-forwarded-by`` metadata), so two instances with stale rows cannot loop.

TLS: the peer is dialled with this instance's CA; its certificate must carry the name of this
instance's own certificate (all instances of a deployment share one server certificate), so
peers can be reached by pod IP.
"""

from __future__ import annotations

import threading

import grpc

from icm_rpc import pb, pb_grpc
from icm_rpc.channels import open_channel
from icm_rpc.tls import TLSFiles, certificate_name

__all__ = ["FORWARDED_HEADER", "Forwarder"]

FORWARDED_HEADER = "icm-forwarded-by"
_PASSED_ON = ("authorization",)


class Forwarder:
    """Analyst stubs to peer instances, one channel per peer address, kept for reuse."""

    def __init__(self, instance: str, tls: TLSFiles | None = None, *,
                 default_timeout_s: float = 60.0) -> None:
        self.instance = instance
        self.tls = tls or TLSFiles()
        self.default_timeout_s = default_timeout_s
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._server_name = ""
        self._credentials = None
        if self.tls.enabled:
            if self.tls.cert is not None:
                self._server_name = certificate_name(self.tls.cert)
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=self.tls.read("ca"))

    def _stub(self, target: str) -> pb_grpc.AnalystStub:
        with self._lock:
            ch = self._channels.get(target)
            if ch is None:
                ch = open_channel(target, self._credentials, self._server_name)
                self._channels[target] = ch
        return pb_grpc.AnalystStub(ch)

    @staticmethod
    def is_forwarded(context: grpc.ServicerContext) -> bool:
        return any(k == FORWARDED_HEADER for k, _ in (context.invocation_metadata() or ()))

    def get_human_view(self, target: str, request: pb.GetHumanViewRequest,
                       context: grpc.ServicerContext) -> pb.GetHumanViewResponse:
        return self.call(target, "GetHumanView", request, context)

    def call(self, target: str, method: str, request, context: grpc.ServicerContext,
             max_timeout_s: float | None = None):
        """Make the Analyst call ``method`` on ``target`` with the caller's credentials and
        remaining deadline; raises ``grpc.RpcError`` as the peer answered (or could not be
        reached). Also used for what only the stream's instance knows: a camera's base models
        (``ListCameras`` of one camera) and ``ChangeSettings``."""
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ())
                    if k in _PASSED_ON]
        metadata.append((FORWARDED_HEADER, self.instance))
        remaining = context.time_remaining()
        if remaining is None or remaining > 1e6:   # the caller set no deadline
            timeout = self.default_timeout_s
        else:
            timeout = max(0.0, remaining - 0.05)      # answer before the caller gives up
        if max_timeout_s is not None:
            timeout = min(timeout, max_timeout_s)
        return getattr(self._stub(target), method)(request, timeout=timeout, metadata=metadata)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()
