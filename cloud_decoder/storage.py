"""Durable storage of frames, detections and cameras: SQLite (embedded, the default) or
PostgreSQL (by URL, for several cloud instances sharing one database).

Exactly-once from the user's side: ``(camera_id, frame_id)`` is the primary key and inserts use
``ON CONFLICT DO NOTHING``, so a frame re-sent after a lost ack is stored once. Every write
commits before it returns; the cloud acks a frame only after that.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CameraRow", "FrameQuery", "FrameRow", "Store", "open_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (
    camera_id TEXT PRIMARY KEY, width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0, base_model_id TEXT NOT NULL DEFAULT '',
    enhancement_model_id TEXT NOT NULL DEFAULT '', instance TEXT NOT NULL DEFAULT '',
    online INTEGER NOT NULL DEFAULT 0, last_seen_us BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS frames (
    camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL, capture_us BIGINT NOT NULL,
    arrival_us BIGINT NOT NULL, stored_us BIGINT NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, base_bytes INTEGER NOT NULL, bpp DOUBLE PRECISION NOT NULL,
    base_layer {blob} NOT NULL, detections TEXT NOT NULL,
    PRIMARY KEY (camera_id, frame_id));
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (camera_id, capture_us);
CREATE TABLE IF NOT EXISTS frame_classes (
    camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL, class_name TEXT NOT NULL,
    PRIMARY KEY (class_name, camera_id, frame_id));
CREATE TABLE IF NOT EXISTS thumbnails (
    camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL, jpeg {blob} NOT NULL,
    PRIMARY KEY (camera_id, frame_id));
CREATE TABLE IF NOT EXISTS human_views (
    camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL, png {blob} NOT NULL,
    enhancement_bytes INTEGER NOT NULL, PRIMARY KEY (camera_id, frame_id));
CREATE TABLE IF NOT EXISTS frame_analysis (
    camera_id TEXT NOT NULL, frame_id BIGINT NOT NULL, base_model_id TEXT NOT NULL,
    base_digest TEXT NOT NULL, analysed_by TEXT NOT NULL, PRIMARY KEY (camera_id, frame_id));
"""

_FRAME_COLS = ("camera_id, frame_id, capture_us, arrival_us, stored_us, width, height, "
               "base_bytes, bpp, detections")


@dataclass
class FrameRow:
    camera_id: str
    frame_id: int
    capture_us: int
    arrival_us: int
    stored_us: int
    width: int
    height: int
    base_bytes: int
    bpp: float
    detections: list[dict[str, Any]] = field(default_factory=list)
    base_layer: bytes | None = None
    thumbnail: bytes | None = None    # JPEG of the machine image (cloud_decoder.thumbnails)
    # the base model that coded the frame, and each detector's weights that analysed it
    # ({"model", "weights", "sha256", "adapted"}); kept in the frame_analysis table
    base_model_id: str = ""
    base_digest: str = ""
    analysed_by: list[dict[str, Any]] = field(default_factory=list)

    @property
    def class_names(self) -> set[str]:
        return {str(d.get("class_name", "")) for d in self.detections}


@dataclass
class CameraRow:
    camera_id: str
    width: int
    height: int
    base_model_id: str
    enhancement_model_id: str
    instance: str
    online: bool
    last_seen_us: int
    frames_stored: int = 0
    last_frame_id: int = 0


@dataclass
class FrameQuery:
    camera_id: str = ""
    since_us: int = 0
    until_us: int = 0
    class_name: str = ""
    limit: int = 100
    after_frame_id: int = 0
    before_frame_id: int = 0
    newest_first: bool = False


@dataclass
class RecentStats:
    """A camera's newest stored frames: what the console shows as its current rate."""

    frames: int = 0
    last_capture_us: int = 0
    mean_bpp: float = 0.0
    kbps: float = 0.0
    fps: float = 0.0


class Store:
    """One connection, serialized by a lock (SQLite) — the cloud batches writes, so one writer
    is enough. PostgreSQL uses the same SQL with ``%s`` placeholders."""

    dialect = "sqlite"

    def __init__(self, conn: Any, placeholder: str = "?") -> None:
        self._conn = conn
        self._ph = placeholder
        self._lock = threading.RLock()
        blob = "BLOB" if self.dialect == "sqlite" else "BYTEA"
        with self._tx() as cur:
            if self.dialect == "postgresql":
                # instances starting together: CREATE TABLE IF NOT EXISTS is not safe against
                # a concurrent twin in PostgreSQL; one at a time (lock held until commit)
                cur.execute("SELECT pg_advisory_xact_lock(7306355)")
            for stmt in _SCHEMA.format(blob=blob).split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def _q(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._tx() as cur:
            cur.execute(self._q(sql), tuple(args))
            return list(cur.fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- cameras -------------------------------------------------------------------------------
    def upsert_camera(self, cam: CameraRow) -> None:
        with self._tx() as cur:
            cur.execute(self._q(
                "INSERT INTO cameras (camera_id, width, height, base_model_id, "
                "enhancement_model_id, instance, online, last_seen_us) VALUES (?, ?, ?, ?, ?, ?, "
                "?, ?) ON CONFLICT (camera_id) DO UPDATE SET width = excluded.width, height = "
                "excluded.height, base_model_id = excluded.base_model_id, enhancement_model_id = "
                "excluded.enhancement_model_id, instance = excluded.instance, online = "
                "excluded.online, last_seen_us = excluded.last_seen_us"),
                (cam.camera_id, cam.width, cam.height, cam.base_model_id,
                 cam.enhancement_model_id, cam.instance, int(cam.online), cam.last_seen_us))

    def set_offline(self, camera_id: str, instance: str, last_seen_us: int) -> None:
        """Mark a camera offline, unless another instance has taken its stream since."""
        with self._tx() as cur:
            cur.execute(self._q("UPDATE cameras SET online = 0, last_seen_us = ? WHERE "
                                "camera_id = ? AND instance = ?"),
                        (last_seen_us, camera_id, instance))

    def mark_instance_offline(self, instance: str) -> None:
        """At start-up: streams an earlier run of this instance held are gone."""
        with self._tx() as cur:
            cur.execute(self._q("UPDATE cameras SET online = 0 WHERE instance = ?"), (instance,))

    def cameras(self, camera_id: str = "") -> list[CameraRow]:
        """Every camera (or one), with its frame count and newest frame id. Per-camera
        subqueries walk the (camera_id, ...) indexes: 20x faster than a join and GROUP BY at
        100k frames (14 ms against 300 ms in SQLite)."""
        rows = self._all(
            "SELECT c.camera_id, c.width, c.height, c.base_model_id, c.enhancement_model_id, "
            "c.instance, c.online, c.last_seen_us, "
            "(SELECT COUNT(*) FROM frames f WHERE f.camera_id = c.camera_id), "
            "(SELECT COALESCE(MAX(f.frame_id), 0) FROM frames f WHERE f.camera_id = c.camera_id)"
            " FROM cameras c " + ("WHERE c.camera_id = ? " if camera_id else "")
            + "ORDER BY c.camera_id", (camera_id,) if camera_id else ())
        return [CameraRow(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], bool(r[6]), int(r[7]),
                          int(r[8]), int(r[9])) for r in rows]

    def camera(self, camera_id: str) -> CameraRow | None:
        return next(iter(self.cameras(camera_id)), None)

    # -- frames --------------------------------------------------------------------------------
    def last_frame_id(self, camera_id: str) -> int:
        rows = self._all("SELECT COALESCE(MAX(frame_id), 0) FROM frames WHERE camera_id = ?",
                         (camera_id,))
        return int(rows[0][0])

    def has_frame(self, camera_id: str, frame_id: int) -> bool:
        return bool(self._all("SELECT 1 FROM frames WHERE camera_id = ? AND frame_id = ?",
                              (camera_id, frame_id)))

    def add_frames(self, frames: Sequence[FrameRow]) -> list[bool]:
        """Insert in one transaction; per frame, True when it was new."""
        out = []
        with self._tx() as cur:
            for f in frames:
                cur.execute(self._q(
                    f"INSERT INTO frames ({_FRAME_COLS}, base_layer) VALUES (?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, ?) ON CONFLICT (camera_id, frame_id) DO NOTHING"),
                    (f.camera_id, f.frame_id, f.capture_us, f.arrival_us, f.stored_us, f.width,
                     f.height, f.base_bytes, f.bpp, json.dumps(f.detections),
                     f.base_layer or b""))
                new = cur.rowcount == 1
                out.append(new)
                if new:
                    for name in sorted(f.class_names):
                        cur.execute(self._q("INSERT INTO frame_classes VALUES (?, ?, ?) ON "
                                            "CONFLICT DO NOTHING"),
                                    (f.camera_id, f.frame_id, name))
                    if f.thumbnail:
                        cur.execute(self._q("INSERT INTO thumbnails VALUES (?, ?, ?) ON "
                                            "CONFLICT DO NOTHING"),
                                    (f.camera_id, f.frame_id, f.thumbnail))
                    if f.base_digest or f.analysed_by:
                        cur.execute(self._q("INSERT INTO frame_analysis VALUES (?, ?, ?, ?, ?) "
                                            "ON CONFLICT DO NOTHING"),
                                    (f.camera_id, f.frame_id, f.base_model_id, f.base_digest,
                                     json.dumps(f.analysed_by)))
        return out

    def with_analysis(self, rows: Sequence[FrameRow]) -> list[FrameRow]:
        """``rows`` with their base model and detector weights filled in (one query per
        camera and 500 frames)."""
        by_cam: dict[str, list[int]] = {}
        for r in rows:
            by_cam.setdefault(r.camera_id, []).append(int(r.frame_id))
        found: dict[tuple[str, int], tuple] = {}
        for cam, ids in by_cam.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found.update(((cam, int(r[0])), r[1:]) for r in self._all(
                    "SELECT frame_id, base_model_id, base_digest, analysed_by FROM "
                    f"frame_analysis WHERE camera_id = ? AND frame_id IN "
                    f"({', '.join('?' * len(chunk))})", (cam, *chunk)))
        for r in rows:
            a = found.get((r.camera_id, int(r.frame_id)))
            if a is not None:
                r.base_model_id, r.base_digest, r.analysed_by = a[0], a[1], json.loads(a[2])
        return list(rows)

    @staticmethod
    def _row(r: tuple, with_layer: bool = False) -> FrameRow:
        return FrameRow(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]),
                        int(r[7]), float(r[8]), json.loads(r[9]),
                        bytes(r[10]) if with_layer else None)

    def frame(self, camera_id: str, frame_id: int, with_layer: bool = False) -> FrameRow | None:
        cols = _FRAME_COLS + (", base_layer" if with_layer else "")
        rows = self._all(f"SELECT {cols} FROM frames WHERE camera_id = ? AND frame_id = ?",
                         (camera_id, frame_id))
        return self._row(rows[0], with_layer) if rows else None

    def frames(self, q: FrameQuery) -> list[FrameRow]:
        where, args = [], []
        if q.camera_id:
            where.append("f.camera_id = ?")
            args.append(q.camera_id)
        if q.since_us:
            where.append("f.capture_us >= ?")
            args.append(q.since_us)
        if q.until_us:
            where.append("f.capture_us < ?")
            args.append(q.until_us)
        if q.after_frame_id:
            where.append("f.frame_id > ?")
            args.append(q.after_frame_id)
        if q.before_frame_id:
            where.append("f.frame_id < ?")
            args.append(q.before_frame_id)
        join = ""
        if q.class_name:
            join = ("JOIN frame_classes k ON k.camera_id = f.camera_id AND k.frame_id = "
                    "f.frame_id AND k.class_name = ?")
            args.insert(0, q.class_name)
        cols = ", ".join(f"f.{c.strip()}" for c in _FRAME_COLS.split(","))
        sql = (f"SELECT {cols} FROM frames f {join} "
               + (f"WHERE {' AND '.join(where)} " if where else "")
               + ("ORDER BY f.camera_id DESC, f.frame_id DESC LIMIT ?" if q.newest_first
                  else "ORDER BY f.camera_id, f.frame_id LIMIT ?"))
        return [self._row(r) for r in self._all(sql, (*args, max(1, min(q.limit, 10000))))]

    def recent_stats(self, camera_id: str, n: int = 50) -> RecentStats:
        """Rate over the camera's ``n`` newest frames (an index range, not a scan)."""
        rows = self._all("SELECT capture_us, base_bytes, bpp FROM frames WHERE camera_id = ? "
                         "ORDER BY frame_id DESC LIMIT ?", (camera_id, max(1, n)))
        if not rows:
            return RecentStats()
        caps = [int(r[0]) for r in rows]
        span_s = (max(caps) - min(caps)) / 1e6
        bpp = sum(float(r[2]) for r in rows) / len(rows)
        kbps = fps = 0.0
        if len(rows) > 1 and span_s > 0:
            # n frames cover n-1 intervals: the newest frame's bytes are not in the span
            fps = (len(rows) - 1) / span_s
            kbps = 8 * sum(int(r[1]) for r in rows[1:]) / span_s / 1000
        return RecentStats(len(rows), caps[0], bpp, kbps, fps)

    # -- thumbnails ----------------------------------------------------------------------------
    def thumbnails(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """The stored thumbnails of these frames, in one query per camera."""
        by_cam: dict[str, list[int]] = {}
        for cam, fid in keys:
            by_cam.setdefault(cam, []).append(int(fid))
        out: dict[tuple[str, int], bytes] = {}
        for cam, ids in by_cam.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = self._all("SELECT frame_id, jpeg FROM thumbnails WHERE camera_id = ? AND "
                                 f"frame_id IN ({', '.join('?' * len(chunk))})", (cam, *chunk))
                out.update(((cam, int(r[0])), bytes(r[1])) for r in rows)
        return out

    def put_thumbnail(self, camera_id: str, frame_id: int, jpeg: bytes) -> None:
        with self._tx() as cur:
            cur.execute(self._q("INSERT INTO thumbnails VALUES (?, ?, ?) ON CONFLICT "
                                "(camera_id, frame_id) DO NOTHING"), (camera_id, frame_id, jpeg))

    # -- human views ---------------------------------------------------------------------------
    def human_view(self, camera_id: str, frame_id: int) -> tuple[bytes, int] | None:
        rows = self._all("SELECT png, enhancement_bytes FROM human_views WHERE camera_id = ? "
                         "AND frame_id = ?", (camera_id, frame_id))
        return (bytes(rows[0][0]), int(rows[0][1])) if rows else None

    def has_human_view(self, camera_id: str, frame_id: int) -> bool:
        return bool(self._all("SELECT 1 FROM human_views WHERE camera_id = ? AND frame_id = ?",
                              (camera_id, frame_id)))

    def put_human_view(self, camera_id: str, frame_id: int, png: bytes,
                       enhancement_bytes: int) -> None:
        with self._tx() as cur:
            cur.execute(self._q("INSERT INTO human_views VALUES (?, ?, ?, ?) ON CONFLICT "
                                "(camera_id, frame_id) DO NOTHING"),
                        (camera_id, frame_id, png, enhancement_bytes))


class _SqliteStore(Store):
    dialect = "sqlite"


class _PostgresStore(Store):
    dialect = "postgresql"


def open_store(url: str) -> Store:
    """``sqlite:///path/to/db``, a plain file path, or ``postgresql://user@host/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError as e:
            raise ValueError("PostgreSQL storage needs the psycopg package: "
                             "pip install 'psycopg[binary]'") from e
        try:
            conn = psycopg.connect(url)
        except psycopg.Error as e:
            raise ValueError(f"cannot connect to PostgreSQL at {url}: {e}") from e
        return _PostgresStore(conn, "%s")
    # sqlite:///relative/path or sqlite:////absolute/path (the usual URL forms), or a path
    path = url.removeprefix("sqlite:///")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return _SqliteStore(conn)
