"""Whether the database answers, as one piece of state: the ingest pipeline reports every
outcome, a background probe checks while nothing is flowing. A change logs one line, flips the
gRPC health of the cloud (NOT_SERVING while the database is away, so that load balancers and
orchestrators see it) and sets ``icm_cloud_database_up``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .metrics import CloudMetrics
from .storage import Store, StoreUnavailableError

__all__ = ["StoreMonitor"]

log = logging.getLogger("icm.cloud")


class StoreMonitor:
    def __init__(self, store: Store, metrics: CloudMetrics, *, interval_s: float = 2.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self.on_change = on_change
        self.up = True
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloud-db-probe", daemon=True)
        metrics.database_up.set(1)

    def report(self, ok: bool, reason: str = "") -> None:
        with self._lock:
            if not ok:
                self.metrics.database_errors.inc()
            if ok == self.up:
                return
            self.up = ok
            down_for = time.monotonic() - self._since
            self._since = time.monotonic()
        self.metrics.database_up.set(int(ok))
        if ok:
            log.warning("database is back after %.1f s: ingest resumes", down_for)
        else:
            log.error("%s: ingest paused (edges keep their frames until the database is back)",
                      reason or "database unavailable")
        if self.on_change is not None:
            self.on_change(ok)

    def check(self) -> bool:
        try:
            self.store.ping()
        except StoreUnavailableError as e:
            self.report(False, str(e))
            return False
        self.report(True)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never lose the probe
                log.exception("database probe failed")

    def start(self) -> StoreMonitor:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
