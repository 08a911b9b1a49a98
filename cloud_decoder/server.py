"""The cloud decoder service: ``EdgeLink`` for cameras, ``Analyst`` for people, gRPC health
checking and reflection, Prometheus ``/metrics``.

::

    with CloudServer(CloudConfig(listen="127.0.0.1:0", db="cloud.sqlite3")) as cloud:
        print(cloud.port)          # the bound port
        cloud.wait()               # until stop() or SIGTERM (see serve())

Shutdown (SIGTERM): health flips to NOT_SERVING, edge streams are closed (edges reconnect
elsewhere and re-send what was not acked), queued frames are finished and committed.

Secure defaults: a cloud refuses to take edge streams on a non-loopback address without TLS, and
to serve the analyst API there without a token, unless ``insecure`` is set (``--insecure``): the
operator says so explicitly. Loopback (the demo, tests) needs neither.

Health: NOT_SERVING while the database is away (ingest pauses, see ``store_monitor``) and while
shutting down.

Streams rebalance: with ``max_connection_age_s`` the server ends each connection after about that
long (gRPC adds ±10 % jitter) and a grace period, so the edges reconnect through the load
balancer and spread over instances added since (a scale-out would otherwise reach only new
cameras). The edge re-sends what was not acked; nothing is lost or stored twice.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from icm_rpc import pb_grpc
from icm_rpc.channels import MAX_MESSAGE_BYTES
from icm_rpc.grpc_metrics import MetricsInterceptor
from icm_rpc.metrics import MetricsServer
from icm_rpc.protos import Undecodable, lenient
from icm_rpc.tls import server_credentials

from .analyst import AnalystServicer, DetectionHub
from .config import CloudConfig
from .decoders import CodecDecoder, Decoder, NoopDecoder
from .edge_link import EdgeLinkServicer
from .edge_stats import EdgeStatsCollector
from .forwarding import Forwarder
from .metrics import CloudMetrics
from .pipeline import IngestPipeline, now_us
from .sessions import SessionRegistry
from .storage import Store, StoreUnavailableError, open_store
from .store_monitor import StoreMonitor

__all__ = ["CloudConfig", "CloudServer", "InsecureConfigError", "is_loopback", "serve"]

log = logging.getLogger("icm.cloud")
ANALYST_PREFIX = "/icm.v1.Analyst/"
SERVICE_NAMES = ("icm.v1.EdgeLink", "icm.v1.Analyst")


class InsecureConfigError(ValueError):
    """Plaintext edge streams or an open analyst API on an address others can reach."""


def is_loopback(address: str) -> bool:
    """Whether a listen address (``host:port``, ``[v6]:port``, ``unix:path``) is reachable
    from this machine only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # 0.0.0.0 is an address too (not loopback); names other than localhost


def check_exposure(c: CloudConfig) -> None:
    """Refuse what would expose the service without protection (see the module docstring)."""
    if c.insecure:
        if not (c.tls.enabled and c.analyst_token) and not (
                is_loopback(c.listen) and is_loopback(c.analyst_listen or c.listen)):
            log.warning("--insecure: plaintext streams or an analyst API without a token on "
                        "%s%s", c.listen, f" / {c.analyst_listen}" if c.analyst_listen else "")
        return
    hint = "; or pass --insecure (ICM_INSECURE=1) to accept this explicitly"
    if not c.tls.enabled and not is_loopback(c.listen):
        raise InsecureConfigError(
            f"refusing to take edge streams on {c.listen} without TLS: give --tls-cert, "
            f"--tls-key and --tls-ca (see `icm certs`), or listen on 127.0.0.1{hint}")
    analyst = c.analyst_listen or c.listen
    if not c.analyst_token and not is_loopback(analyst):
        raise InsecureConfigError(
            f"refusing to serve the analyst API on {analyst} without a token: set "
            f"ICM_ANALYST_TOKEN{hint}")


class _Guard(grpc.ServerInterceptor):
    """Bearer-token check on the analyst API, and error counting by method and status code,
    in one place."""

    def __init__(self, token: str, metrics: CloudMetrics) -> None:
        self.expected = f"Bearer {token}".encode() if token else b""
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        short = method.rsplit("/", 1)[-1]
        if self.expected and method.startswith(ANALYST_PREFIX):
            got = dict(details.invocation_metadata or ()).get("authorization", "")
            if not hmac.compare_digest(str(got).encode(), self.expected):
                self.metrics.errors.labels(short, "UNAUTHENTICATED").inc()
                return _replace(handler, _aborter(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"))
        return _replace(handler, self._counted(short))

    def _counted(self, short: str) -> Callable:
        metrics = self.metrics

        def count(ctx: grpc.ServicerContext) -> None:
            code = ctx.code() if hasattr(ctx, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            if name != "OK":
                metrics.errors.labels(short, name).inc()

        def unavailable(ctx: grpc.ServicerContext, e: StoreUnavailableError) -> None:
            metrics.errors.labels(short, "UNAVAILABLE").inc()
            ctx.abort(grpc.StatusCode.UNAVAILABLE, str(e))

        def undecodable(ctx: grpc.ServicerContext, req: Undecodable) -> None:
            metrics.errors.labels(short, "INVALID_ARGUMENT").inc()
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request does not parse as a {short} request: {req.error}")

        def wrap(behavior: Callable, streaming_out: bool) -> Callable:
            if streaming_out:
                def gen(req, ctx):
                    if isinstance(req, Undecodable):
                        undecodable(ctx, req)
                    try:
                        yield from behavior(req, ctx)
                    except StoreUnavailableError as e:
                        unavailable(ctx, e)
                    except Exception:
                        count(ctx)
                        raise
                return gen

            def unary(req, ctx):
                if isinstance(req, Undecodable):
                    undecodable(ctx, req)
                try:
                    return behavior(req, ctx)
                except StoreUnavailableError as e:
                    unavailable(ctx, e)
                except Exception:
                    count(ctx)
                    raise
            return unary
        return wrap


def _aborter(code: grpc.StatusCode, message: str) -> Callable:
    def wrap(behavior: Callable, streaming_out: bool) -> Callable:
        def abort(req, ctx):
            ctx.abort(code, message)
        return abort
    return wrap


def _replace(handler: grpc.RpcMethodHandler, w: Callable) -> grpc.RpcMethodHandler:
    """The same method with its behaviour passed through ``w(behavior, streaming_out)``, and
    requests that do not parse handed over as :class:`Undecodable`."""
    kw = {"request_deserializer": lenient(handler.request_deserializer),
          "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(w(handler.unary_unary, False), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(w(handler.unary_stream, True), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(w(handler.stream_unary, False), **kw)
    return grpc.stream_stream_rpc_method_handler(w(handler.stream_stream, True), **kw)


def load_detectors(config: CloudConfig) -> list:
    """The configured detectors (analytics package); none when the list is empty.

    Each is a slot that serves frames of a base model with weights adapted to it, where an
    adapted detector for that base digest is on the search path (analytics.served).
    """
    if not config.detectors:
        return []
    from analytics import Detector

    kw = {"device": config.device, "conf": config.detector_conf}
    stock = [Detector(name, weights_dir=config.weights_dir, **kw) for name in config.detectors]
    if not config.use_adapted:
        return stock
    from pathlib import Path

    from analytics.adapted import adapted_dirs, find_adapted
    from analytics.served import ServedDetector

    for d in config.adapted_dirs:
        if not Path(d).is_dir():
            raise ValueError(f"adapted-detector folder not found: {d}")
    found = find_adapted(adapted_dirs(config.adapted_dirs))
    slots = [ServedDetector.build(det, found, **kw) for det in stock]
    for slot in slots:
        log.info("detector %s", slot.describe())
    return slots


class CloudServer:
    def __init__(self, config: CloudConfig, *, detectors: list | None = None,
                 store: Store | None = None) -> None:
        self.config = c = config
        if c.threads:
            import torch

            torch.set_num_threads(c.threads)
        if c.decoder not in ("codec", "noop"):
            raise ValueError(f"decoder must be codec or noop, got {c.decoder!r}")
        check_exposure(c)
        self.metrics = CloudMetrics()
        self.metrics_server = MetricsServer(self.metrics.registry, c.metrics_port)
        self.store = store or open_store(c.db)
        codec = CodecDecoder(c.device) if c.decoder == "codec" else None
        self.decoder: Decoder = codec or NoopDecoder()
        self.detectors = load_detectors(c) if detectors is None else detectors
        if c.decoder == "noop":
            self.detectors = []
        self.sessions = SessionRegistry()
        self.hub = DetectionHub()
        self.health = health.HealthServicer()
        self.monitor = StoreMonitor(self.store, self.metrics, interval_s=c.db_check_s,
                                    on_change=self._set_serving)
        self.pipeline = IngestPipeline(self.store, self.decoder, self.detectors, self.metrics,
                                       max_batch=c.max_batch, on_stored=self.hub.publish,
                                       thumbnail_width=c.thumbnail_width, monitor=self.monitor)
        options: list[tuple[str, int]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # pings find dead transports of edges that send no heartbeats
            ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        if c.max_connection_age_s > 0:
            options += [("grpc.max_connection_age_ms", int(c.max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms",
                         int(c.max_connection_age_grace_s * 1000))]
        self.server = grpc.server(
            ThreadPoolExecutor(c.max_workers, thread_name_prefix="cloud-rpc"),
            interceptors=[MetricsInterceptor(self.metrics.grpc),
                          _Guard(c.analyst_token, self.metrics)],
            options=options, maximum_concurrent_rpcs=c.max_workers - 4)
        self.port = self._bind(c.listen, c.mtls)
        self.analyst_port = self._bind(c.analyst_listen, False) if c.analyst_listen else self.port
        self.instance = (c.advertise or c.instance
                         or f"{socket.gethostname()}:{self.analyst_port}")
        self.forwarder = Forwarder(self.instance, c.tls,
                                   default_timeout_s=c.enhancement_timeout_s + 5)
        self.store.mark_instance_offline(self.instance)
        self.edge_link = EdgeLinkServicer(
            self.store, self.pipeline, self.sessions, self.metrics, instance=self.instance,
            require_identity=c.tls.enabled and c.mtls, heartbeat_s=c.heartbeat_s,
            hello_timeout_s=c.hello_timeout_s, stats_s=c.edge_stats_s)
        self.pipeline.on_camera_frame = self.edge_link.frame_stored
        self.metrics.registry.register(EdgeStatsCollector(self.sessions))
        self._set_limits()
        pb_grpc.add_EdgeLinkServicer_to_server(self.edge_link, self.server)
        pb_grpc.add_AnalystServicer_to_server(AnalystServicer(
            self.store, self.sessions, codec,
            self.hub, self.metrics, enhancement_timeout_s=c.enhancement_timeout_s,
            forwarder=self.forwarder), self.server)
        self._housekeeping = threading.Thread(target=self._housekeep, name="cloud-housekeeping",
                                              daemon=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._stopped = threading.Event()
        self._stopping = False

    def _bind(self, address: str, mtls: bool) -> int:
        c = self.config
        if c.tls.enabled:
            port = self.server.add_secure_port(address, server_credentials(c.tls, mtls))
        else:
            port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    def _set_serving(self, serving: bool) -> None:
        if self._stopped.is_set() or self._stopping:
            return
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def _set_limits(self) -> None:
        """Limits next to usage: what the instance is configured to hold."""
        c, m = self.config, self.metrics
        m.max_streams.set(c.max_workers - 4)
        m.queue_capacity.set(self.pipeline.max_queue)
        m.frame_retention.set(c.frame_retention_s)
        m.camera_frames_max.set(c.max_camera_frames_mb * 2**20)
        m.human_view_retention.set(c.human_view_retention_s)
        m.camera_human_views_max.set(c.max_camera_human_views_mb * 2**20)

    def refresh_presence(self) -> None:
        """Per-camera state from the database: a camera offline everywhere reads
        ``icm_cloud_camera_connected 0`` on every instance (so a silent camera alerts even when
        the instance that held it is gone); one whose stream another instance holds is dropped
        from here. Also the camera counts and the database's size."""
        held = {s.camera_id for s in self.sessions.all()}
        online = offline = 0
        for camera, instance, is_online in self.store.camera_presence():
            online += is_online
            offline += not is_online
            if camera in held:
                continue
            if is_online and instance != self.instance:
                self.edge_link.forget_camera(camera)
            elif not is_online:
                self.metrics.camera_connected.labels(camera).set(0)
        self.metrics.cameras.labels("online").set(online)
        self.metrics.cameras.labels("offline").set(offline)
        self.metrics.database_size.set(self.store.size_bytes())

    def _housekeep(self) -> None:
        """Close streams of silent edges (every 0.5 s), refresh per-camera state (every
        ``presence_interval_s``) and apply retention (every ``retention_interval_s``)."""
        policy = self.config.retention
        next_sweep = next_presence = time.monotonic()
        while not self._stopped.wait(0.5):
            try:
                self.edge_link.reap_silent()
                if time.monotonic() >= next_presence:
                    next_presence = time.monotonic() + self.config.presence_interval_s
                    self.refresh_presence()
                if policy.enabled and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.config.retention_interval_s
                    self.apply_retention()
            except StoreUnavailableError as e:
                self.monitor.report(False, str(e))
            except Exception:
                log.exception("housekeeping failed")

    def apply_retention(self) -> dict[str, int]:
        """Delete what is over the per-camera retention bounds now; returns counts."""
        counts = self.store.apply_retention(self.config.retention, now_us())
        for kind, n in counts.items():
            if n:
                self.metrics.retention_deleted.labels(kind).inc(n)
        if any(counts.values()):
            log.info("retention: deleted %d frames and %d cached human views",
                     counts["frames"], counts["human_views"])
        return counts

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> CloudServer:
        self.pipeline.start()
        self.metrics_server.start()
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.monitor.start()
        self._housekeeping.start()
        log.info("cloud %s listening on port %d (analysts: %d, metrics: %s)", self.instance,
                 self.port, self.analyst_port, self.metrics_server.port)
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set() or self._stopping:
            return
        self._stopping = True
        self.health.enter_graceful_shutdown()
        self.monitor.stop()
        for s in self.sessions.all():
            s.close()
        self.server.stop(grace).wait(grace + 1)
        self.pipeline.stop()
        self.forwarder.close()
        self.metrics_server.stop()
        self._stopped.set()
        if self._housekeeping.is_alive():
            self._housekeeping.join(10)
        self.store.close()

    def wait(self) -> None:
        self._stopped.wait()

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: CloudConfig) -> None:
    """Run until SIGTERM / SIGINT, then shut down gracefully."""
    try:
        server = CloudServer(config).start()
    except StoreUnavailableError as e:  # at start-up there is nothing to keep: say why, exit
        raise ValueError(str(e)) from None
    done = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"icm cloud: listening on port {server.port}" + (
        f", metrics on :{server.metrics_server.port}/metrics" if config.metrics_port is not None
        else ""), flush=True)
    done.wait()
    server.stop()
