"""The edge's durable state: base frames not yet acked, and the retention store that answers
enhancement requests. One SQLite file, so that a killed edge restarts where it stopped.

- ``pending``: base layers waiting for the cloud's cumulative ack, bounded by ``max_bytes``;
  when full, the oldest pending frames are dropped (counted and reported by the caller).
- ``retained``: per frame, the exact base bytes plus either the enhancement layer (eager mode)
  or the raw frame as PNG (lazy mode), bounded by age and by ``max_retained_bytes``.
- ``meta``: the camera id, the next frame id (ids keep increasing across restarts) and the
  spool's *epoch*: a random name made with the spool. Frame ids count within the epoch; the
  cloud maps (camera, epoch, id) to ids of its own that are never reused, so a spool that is
  lost (a new disk, a rescheduled pod) loses only the frames it held, never the ones a fresh
  spool captures next. A spool from before epochs keeps the empty epoch.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PendingFrame", "RetainedFrame", "Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    frame_id INTEGER PRIMARY KEY, capture_us INTEGER NOT NULL, layer BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS retained (
    frame_id INTEGER PRIMARY KEY, capture_us INTEGER NOT NULL, base BLOB NOT NULL,
    enhancement BLOB, raw_png BLOB, nbytes INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class PendingFrame:
    frame_id: int
    capture_us: int
    layer: bytes


@dataclass(frozen=True)
class RetainedFrame:
    frame_id: int
    capture_us: int
    base: bytes
    enhancement: bytes | None
    raw_png: bytes | None


class Spool:
    """Thread-safe; every write is committed before the call returns."""

    def __init__(self, path: str | Path, camera_id: str, *, max_bytes: int = 256 << 20,
                 max_retained_bytes: int = 1 << 30, retention_s: float = 3600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_retained_bytes = max_retained_bytes
        self.retention_s = retention_s
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        owner = self._meta("camera_id")
        if owner is None:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_meta("camera_id", camera_id)
            self._set_meta("epoch", self.new_epoch())
            self._db.execute("COMMIT")
        elif owner != camera_id:
            raise ValueError(f"spool {self.path} belongs to camera {owner!r}, not {camera_id!r}: "
                             "give each camera its own --spool-dir")
        self.epoch = self._meta("epoch") or ""
        self._pending_bytes = self._scalar("SELECT COALESCE(SUM(LENGTH(layer)), 0) FROM pending")
        self._retained_bytes = self._scalar("SELECT COALESCE(SUM(nbytes), 0) FROM retained")

    # -- helpers -------------------------------------------------------------------------------
    def _scalar(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- frame ids -----------------------------------------------------------------------------
    @staticmethod
    def new_epoch() -> str:
        return secrets.token_hex(8)

    def renew_epoch(self) -> str:
        """Start a new epoch (the cloud has a newer one for this camera: this spool is an old
        copy). Pending frames keep their ids and are sent under the new epoch."""
        with self._lock:
            self.epoch = self.new_epoch()
            self._set_meta("epoch", self.epoch)
            return self.epoch

    def next_frame_id(self) -> int:
        """Reserve the next frame id (durable: never reused after a restart)."""
        with self._lock:
            nxt = int(self._meta("next_frame_id") or 1)
            self._set_meta("next_frame_id", str(nxt + 1))
            return nxt

    def skip_to(self, frame_id: int) -> None:
        """Make the next id exceed ``frame_id`` (the cloud knows a later id than this spool)."""
        with self._lock:
            if int(self._meta("next_frame_id") or 1) <= frame_id:
                self._set_meta("next_frame_id", str(frame_id + 1))

    # -- pending base frames -------------------------------------------------------------------
    def add(self, frame_id: int, capture_us: int, base: bytes, *, enhancement: bytes | None = None,
            raw_png: bytes | None = None) -> list[int]:
        """Store a new frame (pending + retained) in one transaction.

        Returns the ids of pending frames dropped to stay under ``max_bytes`` (oldest first).
        """
        dropped: list[int] = []
        extra = len(enhancement or b"") + len(raw_png or b"")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while self._pending_bytes + len(base) > self.max_bytes:
                    row = self._db.execute("SELECT frame_id, LENGTH(layer) FROM pending "
                                           "ORDER BY frame_id LIMIT 1").fetchone()
                    if row is None:
                        break
                    self._db.execute("DELETE FROM pending WHERE frame_id = ?", (row[0],))
                    self._pending_bytes -= int(row[1])
                    dropped.append(int(row[0]))
                self._db.execute("INSERT INTO pending VALUES (?, ?, ?)",
                                 (frame_id, capture_us, base))
                self._db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)",
                                 (frame_id, capture_us, base, enhancement, raw_png,
                                  len(base) + extra))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending_bytes += len(base)
            self._retained_bytes += len(base) + extra
            self._expire_retained()
        return dropped

    def pending_after(self, frame_id: int, limit: int = 64) -> list[PendingFrame]:
        with self._lock:
            rows = self._db.execute("SELECT frame_id, capture_us, layer FROM pending WHERE "
                                    "frame_id > ? ORDER BY frame_id LIMIT ?",
                                    (frame_id, limit)).fetchall()
        return [PendingFrame(int(a), int(b), bytes(c)) for a, b, c in rows]

    def ack(self, frame_id: int) -> int:
        """Cumulative ack: forget pending frames up to ``frame_id``; returns how many."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(layer)), 0) FROM "
                                   "pending WHERE frame_id <= ?", (frame_id,)).fetchone()
            if row[0]:
                self._db.execute("DELETE FROM pending WHERE frame_id <= ?", (frame_id,))
                self._pending_bytes -= int(row[1])
            return int(row[0])

    def pending_stats(self) -> tuple[int, int]:
        """(frames, bytes) waiting for an ack."""
        with self._lock:
            return self._scalar("SELECT COUNT(*) FROM pending"), self._pending_bytes

    # -- retention -----------------------------------------------------------------------------
    def retained(self, frame_id: int) -> RetainedFrame | None:
        with self._lock:
            row = self._db.execute("SELECT frame_id, capture_us, base, enhancement, raw_png FROM "
                                   "retained WHERE frame_id = ?", (frame_id,)).fetchone()
        if row is None:
            return None
        return RetainedFrame(int(row[0]), int(row[1]), bytes(row[2]),
                             None if row[3] is None else bytes(row[3]),
                             None if row[4] is None else bytes(row[4]))

    def store_enhancement(self, frame_id: int, layer: bytes) -> None:
        """Keep a lazily encoded layer so that a second request costs nothing."""
        with self._lock:
            cur = self._db.execute("UPDATE retained SET enhancement = ?, nbytes = nbytes + ? "
                                   "WHERE frame_id = ? AND enhancement IS NULL",
                                   (layer, len(layer), frame_id))
            if cur.rowcount:
                self._retained_bytes += len(layer)

    def retained_from(self) -> int:
        """The oldest frame id kept for enhancement requests (the next id when none is)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(frame_id) FROM retained").fetchone()
            if row[0] is not None:
                return int(row[0])
            return int(self._meta("next_frame_id") or 1)

    def retained_stats(self) -> tuple[int, int]:
        with self._lock:
            return self._scalar("SELECT COUNT(*) FROM retained"), self._retained_bytes

    def _expire_retained(self) -> None:
        """Drop retained frames older than the retention time, then the oldest until the
        tracked size fits (the caller holds the lock)."""
        cutoff = int((time.time() - self.retention_s) * 1e6)
        old = self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM retained WHERE "
                               "capture_us < ?", (cutoff,)).fetchone()[0]
        if old:
            self._db.execute("DELETE FROM retained WHERE capture_us < ?", (cutoff,))
            self._retained_bytes -= int(old)
        while self._retained_bytes > self.max_retained_bytes:
            row = self._db.execute("SELECT frame_id, nbytes FROM retained ORDER BY frame_id "
                                   "LIMIT 1").fetchone()
            if row is None:
                self._retained_bytes = 0
                break
            self._db.execute("DELETE FROM retained WHERE frame_id = ?", (row[0],))
            self._retained_bytes -= int(row[1])
