"""Prometheus endpoint: each service instance owns a registry, so several instances (tests, the
demo) can live in one process without clashing metric names.

Every registry also carries what an operator needs next to the service's own metrics: the
process (``process_*``: CPU, memory, file descriptors, start time), the Python runtime
(``python_info``, ``python_gc_*``), the build (``icm_build_info``) and the limits the process
runs under (``icm_process_memory_limit_bytes``, ``icm_process_cpu_limit_cores``, from its cgroup),
so that usage can be read against them in one query.
"""

from __future__ import annotations

import math
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

__all__ = ["MetricsServer", "add_runtime_metrics", "build_revision", "cgroup_limits",
           "latency_buckets", "software_version"]


def latency_buckets() -> tuple[float, ...]:
    """Seconds, from 1 ms to 2 min: covers a no-op decode and a CPU human-view decode."""
    return (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 120.0)


def software_version() -> str:
    """The installed package's version ("unknown" when run from a bare source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("icm-scalable")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def build_revision() -> str:
    """The source revision the image was built from (``ICM_BUILD_REVISION``, a build argument
    of the Dockerfiles); "unknown" outside an image. Printable and bounded: it is a label."""
    rev = os.environ.get("ICM_BUILD_REVISION", "").strip()
    return rev[:40] if rev and rev.isprintable() else "unknown"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_limits(root: Path = Path("/sys/fs/cgroup")) -> tuple[float | None, float | None]:
    """(memory limit in bytes, CPU limit in cores) of this process's cgroup, None where there
    is none. cgroup v2 (``memory.max``, ``cpu.max``) first, then v1."""
    mem: float | None = None
    cpu: float | None = None
    v2 = _read(root / "memory.max")
    if v2 is not None:
        mem = None if v2 == "max" else float(v2)
        quota = _read(root / "cpu.max")
        if quota:
            q, _, period = quota.partition(" ")
            if q != "max" and period:
                cpu = float(q) / float(period)
        return mem, cpu
    v1 = _read(root / "memory" / "memory.limit_in_bytes")
    if v1 is not None and int(v1) < 1 << 60:   # "no limit" reads as a huge number
        mem = float(v1)
    q1 = _read(root / "cpu" / "cpu.cfs_quota_us")
    p1 = _read(root / "cpu" / "cpu.cfs_period_us")
    if q1 and p1 and int(q1) > 0:
        cpu = int(q1) / int(p1)
    return mem, cpu


def add_runtime_metrics(registry: CollectorRegistry, component: str) -> None:
    """Process, runtime, build and limit metrics into ``registry`` (see the module
    docstring). ``component`` is one of a few fixed names (cloud, edge)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge("icm_build_info", "Always 1; the labels say what is running",
                 ["component", "version", "revision", "python_version"], registry=registry)
    info.labels(component, software_version(), build_revision(),
                platform.python_version()).set(1)
    # +Inf where the cgroup sets no limit: usage / limit is then 0, and the series always
    # exists for rules and dashboards to divide by
    mem, cpu = cgroup_limits()
    Gauge("icm_process_memory_limit_bytes", "Memory limit of the process's cgroup (the "
          "container's limit; +Inf: none): compare process_resident_memory_bytes",
          registry=registry).set(math.inf if mem is None else mem)
    Gauge("icm_process_cpu_limit_cores", "CPU quota of the process's cgroup in cores (+Inf: "
          "none): compare rate(process_cpu_seconds_total)",
          registry=registry).set(math.inf if cpu is None else cpu)


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
