"""Per-RPC metrics under the names the gRPC ecosystem uses (go-grpc-middleware's
``grpc_server_*`` / ``grpc_client_*``), so that stock dashboards and alert rules for gRPC
services work on ours:

- ``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code``),
  ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total`` and the histogram
  ``grpc_server_handling_seconds``, labelled ``grpc_type`` (unary, client_stream,
  server_stream, bidi_stream), ``grpc_service`` and ``grpc_method``;
- the client side of the edge's stream: ``grpc_client_started_total``,
  ``grpc_client_handled_total``, ``grpc_client_msg_sent_total``,
  ``grpc_client_msg_received_total``.

Label values are bounded: only methods a server registered are counted (an unknown method never
reaches a handler), and codes are the 17 of ``grpc.StatusCode``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from .metrics import latency_buckets

__all__ = ["GrpcClientMetrics", "GrpcServerMetrics", "MetricsInterceptor", "rpc_type"]

_LABELS = ["grpc_type", "grpc_service", "grpc_method"]


def rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _split(method: str) -> tuple[str, str]:
    """"/icm.v1.Analyst/GetFrame" -> ("icm.v1.Analyst", "GetFrame")."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _RpcCounters:
    """The four counters both sides export (grpc_<side>_started / handled / msg_received /
    msg_sent): one definition, names that differ only by side."""

    def __init__(self, side: str, registry: CollectorRegistry) -> None:
        by = "on the server" if side == "server" else "by the client"
        self.started = Counter(f"grpc_{side}_started", f"RPCs started {by}", _LABELS,
                               registry=registry)
        self.handled = Counter(f"grpc_{side}_handled", f"RPCs completed on the {side}, by "
                               "status code", [*_LABELS, "grpc_code"], registry=registry)
        self.received = Counter(f"grpc_{side}_msg_received", "Stream messages received",
                                _LABELS, registry=registry)
        self.sent = Counter(f"grpc_{side}_msg_sent", "Stream messages sent", _LABELS,
                            registry=registry)


class GrpcServerMetrics(_RpcCounters):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__("server", registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Time from an RPC's start to "
                                 "its status (streams: their whole life)", _LABELS,
                                 buckets=latency_buckets(), registry=registry)


class GrpcClientMetrics(_RpcCounters):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__("client", registry)

    def labels(self, kind: str, method: str) -> tuple[str, str, str]:
        return (kind, *_split(method))


def _code(ctx: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    code = ctx.code() if hasattr(ctx, "code") else None
    return code if isinstance(code, grpc.StatusCode) else default


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC of the server; put it first in ``interceptors`` so that what
    later interceptors refuse (a missing token) is counted too."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self.m = metrics

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None:
            return None
        labels = (rpc_type(handler), *_split(details.method))
        m = self.m

        def done(ctx: grpc.ServicerContext, t0: float, code: grpc.StatusCode) -> None:
            m.handled.labels(*labels, code.name).inc()
            m.seconds.labels(*labels).observe(time.perf_counter() - t0)

        def requests(it: Iterator) -> Iterator:
            for msg in it:
                m.received.labels(*labels).inc()
                yield msg

        def wrap(behavior: Callable, req_stream: bool, resp_stream: bool) -> Callable:
            if resp_stream:
                def streaming(req, ctx):
                    t0 = time.perf_counter()
                    m.started.labels(*labels).inc()
                    if req_stream:
                        req = requests(req)
                    else:
                        m.received.labels(*labels).inc()
                    code = grpc.StatusCode.OK
                    try:
                        for msg in behavior(req, ctx):
                            m.sent.labels(*labels).inc()
                            yield msg
                        code = _code(ctx, grpc.StatusCode.OK)
                    except GeneratorExit:
                        code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception:
                        code = _code(ctx, grpc.StatusCode.UNKNOWN)
                        raise
                    finally:
                        done(ctx, t0, code)
                return streaming

            def unary(req, ctx):
                t0 = time.perf_counter()
                m.started.labels(*labels).inc()
                if req_stream:
                    req = requests(req)
                else:
                    m.received.labels(*labels).inc()
                code = grpc.StatusCode.OK
                try:
                    resp = behavior(req, ctx)
                    m.sent.labels(*labels).inc()
                    code = _code(ctx, grpc.StatusCode.OK)
                    return resp
                except Exception:
                    code = _code(ctx, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    done(ctx, t0, code)
            return unary

        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, False, False), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, False, True), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, True, False), **kw)
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream, True, True), **kw)
