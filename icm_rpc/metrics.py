"""Prometheus endpoint: each service instance owns a registry, so several instances (tests, the
demo) can live in one process without clashing metric names."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsServer", "latency_buckets"]


def latency_buckets() -> tuple[float, ...]:
    """Seconds, from 1 ms to 2 min: covers a no-op decode and a CPU human-view decode."""
    return (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 120.0)


@dataclass
class MetricsServer:
    """``/metrics`` over HTTP on ``port`` (0: any free port; None: no endpoint)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    port: int | None = None
    host: str = "0.0.0.0"
    _server: object = None
    _thread: threading.Thread | None = None

    def start(self) -> int | None:
        if self.port is None:
            return None
        self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                       registry=self.registry)
        self.port = self._server.server_port  # type: ignore[attr-defined]
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None
