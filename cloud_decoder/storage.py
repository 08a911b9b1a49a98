"""Durable storage of frames, detections and cameras: SQLite (embedded, the default) or
PostgreSQL (by URL, for several cloud instances sharing one database).

Exactly-once from the user's side: ``(camera_id, frame_id)`` is the primary key and inserts use
``ON CONFLICT DO NOTHING``, so a frame re-sent after a lost ack is stored once. Every write
commits before it returns; the cloud acks a frame only after that.

Frame identity: an edge numbers frames 1, 2, ... within its spool's *epoch* (see
``protos/icm/v1/icm.proto``, ``Hello.epoch``). The ``epochs`` table gives each (camera, epoch)
an offset when the cloud first sees it: the camera's highest id so far. A frame's id is
``offset + the edge's id``, so an edge that restarts with a fresh spool continues the camera's
ids instead of reusing them, and ids of one camera never repeat, even after retention deletes
old frames (the offset comes from the epochs' high-water marks, not from surviving rows).

Outages: a database that cannot be reached raises :class:`StoreUnavailableError` (retry
later; its message never carries the password). PostgreSQL connections come from a pool that
checks each connection before use and reconnects by itself.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytics.results import Detection
from icm_rpc.redact import redact_url, url_secrets

__all__ = ["CameraRow", "DetectorRun", "EpochInfo", "FrameQuery", "FrameRow", "RetentionPolicy",
           "Store", "StoreUnavailableError", "detections_from_json", "detections_json",
           "detector_runs_json", "open_store", "redact_url"]

log = logging.getLogger("icm.cloud")

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
CREATE TABLE IF NOT EXISTS epochs (
    camera_id TEXT NOT NULL, epoch TEXT NOT NULL, generation INTEGER NOT NULL,
    frame_offset BIGINT NOT NULL, last_frame_id BIGINT NOT NULL DEFAULT 0,
    first_seen_us BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (camera_id, epoch));
"""

# columns added after the first release: (table, column, definition); added when missing
_ADDED_COLUMNS = (
    ("frames", "epoch", "TEXT NOT NULL DEFAULT ''"),
    ("frames", "edge_frame_id", "BIGINT NOT NULL DEFAULT 0"),
    ("cameras", "epoch", "TEXT NOT NULL DEFAULT ''"),
    ("cameras", "retained_from", "BIGINT NOT NULL DEFAULT 0"),
    ("human_views", "capture_us", "BIGINT NOT NULL DEFAULT 0"),
    ("human_views", "nbytes", "BIGINT NOT NULL DEFAULT 0"),
)
_BACKFILL = {
    ("frames", "edge_frame_id"): "UPDATE frames SET edge_frame_id = frame_id",
    ("human_views", "nbytes"): "UPDATE human_views SET nbytes = LENGTH(png)",
    ("human_views", "capture_us"): (
        "UPDATE human_views SET capture_us = COALESCE((SELECT f.capture_us FROM frames f WHERE "
        "f.camera_id = human_views.camera_id AND f.frame_id = human_views.frame_id), 0)"),
}

_FRAME_COLS = ("camera_id, frame_id, capture_us, arrival_us, stored_us, width, height, "
               "base_bytes, bpp, detections, epoch, edge_frame_id")
_CACHED = ("EXISTS (SELECT 1 FROM human_views h WHERE h.camera_id = f.camera_id AND "
           "h.frame_id = f.frame_id)")
_HIGH_BIT = 1 << 62  # ids stay well inside a signed 64-bit column


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached or failed transiently: retry later. The message names the
    database without its password."""


@dataclass(frozen=True)
class DetectorRun:
    """One detector's pass over a stored frame: which weights analysed it (the API's
    ``DetectorRun``). Stored as JSON ``{"model", "weights", "sha256", "adapted"}``."""

    model: str
    weights: str
    sha256: str = ""      # first 16 hex digits of the weights file's SHA-256
    adapted: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "weights": self.weights}
        if self.sha256:
            out["sha256"] = self.sha256
        out["adapted"] = self.adapted
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorRun:
        return cls(model=str(d.get("model", "")), weights=str(d.get("weights", "")),
                   sha256=str(d.get("sha256", "")), adapted=bool(d.get("adapted", False)))


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
    detections: list[Detection] = field(default_factory=list)
    base_layer: bytes | None = None
    epoch: str = ""
    edge_frame_id: int = 0          # the edge's id within ``epoch`` (0: same as frame_id)
    human_view_cached: bool = False
    thumbnail: bytes | None = None    # JPEG of the machine image (cloud_decoder.thumbnails)
    # the base model that coded the frame, and each detector's weights that analysed it;
    # kept in the frame_analysis table
    base_model_id: str = ""
    base_digest: str = ""
    analysed_by: list[DetectorRun] = field(default_factory=list)

    @property
    def class_names(self) -> set[str]:
        return {d.class_name for d in self.detections}


def detector_runs_json(runs: Sequence[DetectorRun]) -> str:
    """The frame_analysis.analysed_by column: the JSON list every release has written."""
    return json.dumps([r.to_dict() for r in runs])


def detections_json(detections: Sequence[Detection]) -> str:
    """The ``frames.detections`` column: a JSON list of :meth:`Detection.to_dict` (with each
    one's ``model``); this and :func:`detections_from_json` are the only readers and writers."""
    return json.dumps([d.to_dict() for d in detections])


def detections_from_json(text: str) -> list[Detection]:
    return [Detection.from_dict(d) for d in json.loads(text)]


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
    epoch: str = ""                 # the epoch of the camera's current (newest) spool
    retained_from: int = 0          # oldest edge frame id of that epoch the edge still keeps


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


@dataclass(frozen=True)
class EpochInfo:
    """Where a (camera, epoch) stands: cloud id = ``offset`` + edge id; ``last_frame_id`` is
    the highest edge id stored; ``newest`` is False when the camera has a later epoch."""

    epoch: str
    offset: int
    last_frame_id: int
    newest: bool


@dataclass(frozen=True)
class RetentionPolicy:
    """Per-camera bounds (0: none). Ages are by capture time; sizes count base layers (frames)
    and PNG bytes (cached human views); the oldest go first."""

    frame_age_s: float = 0.0
    frame_bytes: int = 0
    human_view_age_s: float = 0.0
    human_view_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return any((self.frame_age_s, self.frame_bytes, self.human_view_age_s,
                    self.human_view_bytes))


class _Scrubber(logging.Filter):
    """Removes the database password from records of the connection pool's logger."""

    def __init__(self, secrets_: list[str], replacement: str) -> None:
        super().__init__()
        self.secrets = [s for s in sorted(set(secrets_), key=len, reverse=True) if s]
        self.replacement = replacement

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, self.replacement if s.startswith(("postgres", "sqlite"))
                                else "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class Store:
    """The shared SQL of both dialects (PostgreSQL takes ``%s`` placeholders). Subclasses
    provide connections through :meth:`_connection` and say which driver errors mean "the
    database is away"."""

    dialect = "sqlite"

    def __init__(self, placeholder: str = "?") -> None:
        self._ph = placeholder
        blob = "BLOB" if self.dialect == "sqlite" else "BYTEA"
        with self._tx() as cur:
            if self.dialect == "postgresql":
                # instances starting together: CREATE TABLE IF NOT EXISTS is not safe against
                # a concurrent twin in PostgreSQL; one at a time (lock held until commit)
                cur.execute("SELECT pg_advisory_xact_lock(7306355)")
            for stmt in _SCHEMA.format(blob=blob).split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            have = self._columns(cur)
            for table, column, definition in _ADDED_COLUMNS:
                if column not in have.get(table, set()):
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                    if (table, column) in _BACKFILL:
                        cur.execute(_BACKFILL[(table, column)])
            cur.execute("CREATE INDEX IF NOT EXISTS human_views_by_time ON human_views "
                        "(camera_id, capture_us)")

    # -- connections (per dialect) -------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[Any]:
        raise NotImplementedError

    def _unavailable(self, exc: BaseException) -> bool:
        """True when ``exc`` means the database is away (retry), not a bad statement."""
        return False

    def _describe(self) -> str:
        return "the database"

    def _columns(self, cur: Any) -> dict[str, set[str]]:
        raise NotImplementedError

    def ping(self) -> None:
        """Raises :class:`StoreUnavailableError` when the database cannot answer now."""
        with self._tx() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()

    def close(self) -> None:
        pass

    # -- helpers -------------------------------------------------------------------------------
    def _q(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction: commits on success, rolls back on error; outages become
        :class:`StoreUnavailableError`."""
        try:
            with self._connection() as conn:
                cur = conn.cursor()
                try:
                    yield cur
                    conn.commit()
                except BaseException:
                    with suppress(Exception):  # the connection itself may be gone
                        conn.rollback()
                    raise
                finally:
                    with suppress(Exception):
                        cur.close()
        except StoreUnavailableError:
            raise
        except Exception as e:
            if self._unavailable(e):
                raise StoreUnavailableError(
                    f"{self._describe()} is unavailable: {self._clean(e)}") from None
            raise

    def _clean(self, e: BaseException) -> str:
        return " ".join(str(e).split()) or type(e).__name__

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._tx() as cur:
            cur.execute(self._q(sql), tuple(args))
            return list(cur.fetchall())

    # -- cameras -------------------------------------------------------------------------------
    def upsert_camera(self, cam: CameraRow) -> None:
        with self._tx() as cur:
            cur.execute(self._q(
                "INSERT INTO cameras (camera_id, width, height, base_model_id, "
                "enhancement_model_id, instance, online, last_seen_us, epoch, retained_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (camera_id) DO UPDATE SET "
                "width = excluded.width, height = excluded.height, base_model_id = "
                "excluded.base_model_id, enhancement_model_id = excluded.enhancement_model_id, "
                "instance = excluded.instance, online = excluded.online, last_seen_us = "
                "excluded.last_seen_us, epoch = excluded.epoch, retained_from = "
                "excluded.retained_from"),
                (cam.camera_id, cam.width, cam.height, cam.base_model_id,
                 cam.enhancement_model_id, cam.instance, int(cam.online), cam.last_seen_us,
                 cam.epoch, cam.retained_from))

    def set_base_models(self, models: dict[str, str]) -> None:
        """The base model each camera's frames are coded with now (camera -> model id: its
        edge switched), in one transaction."""
        with self._tx() as cur:
            for camera_id, model_id in models.items():
                cur.execute(self._q("UPDATE cameras SET base_model_id = ? WHERE camera_id = ?"),
                            (model_id, camera_id))

    def set_offline(self, camera_id: str, instance: str, last_seen_us: int,
                    retained_from: int | None = None) -> None:
        """Mark a camera offline, unless another instance has taken its stream since."""
        with self._tx() as cur:
            if retained_from is None:
                cur.execute(self._q("UPDATE cameras SET online = 0, last_seen_us = ? WHERE "
                                    "camera_id = ? AND instance = ?"),
                            (last_seen_us, camera_id, instance))
            else:
                cur.execute(self._q("UPDATE cameras SET online = 0, last_seen_us = ?, "
                                    "retained_from = ? WHERE camera_id = ? AND instance = ?"),
                            (last_seen_us, retained_from, camera_id, instance))

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
            "(SELECT COALESCE(MAX(f.frame_id), 0) FROM frames f WHERE f.camera_id = c.camera_id),"
            " c.epoch, c.retained_from FROM cameras c "
            + ("WHERE c.camera_id = ? " if camera_id else "")
            + "ORDER BY c.camera_id", (camera_id,) if camera_id else ())
        return [CameraRow(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], bool(r[6]), int(r[7]),
                          int(r[8]), int(r[9]), r[10], int(r[11])) for r in rows]

    def camera_epochs(self) -> dict[str, tuple[str, int, str]]:
        """Per camera: (current epoch, oldest edge frame id the edge keeps, enhancement model
        id), without counting frames."""
        rows = self._all("SELECT camera_id, epoch, retained_from, enhancement_model_id FROM "
                         "cameras")
        return {r[0]: (r[1], int(r[2]), r[3]) for r in rows}

    def camera(self, camera_id: str) -> CameraRow | None:
        return next(iter(self.cameras(camera_id)), None)

    # -- epochs --------------------------------------------------------------------------------
    def open_epoch(self, camera_id: str, epoch: str, now_us: int = 0) -> EpochInfo:
        """The offset of ``epoch`` for ``camera_id``, registering it (offset: the camera's
        highest id so far) the first time the cloud sees it."""
        with self._tx() as cur:
            if self.dialect == "postgresql":   # one registration per camera at a time
                cur.execute("SELECT pg_advisory_xact_lock(7306356, hashtext(%s))", (camera_id,))
            cur.execute(self._q("SELECT epoch, generation, frame_offset, last_frame_id FROM "
                                "epochs WHERE camera_id = ?"), (camera_id,))
            rows = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()}
            cur.execute(self._q("SELECT COALESCE(MAX(frame_id), 0) FROM frames WHERE "
                                "camera_id = ?"), (camera_id,))
            top = int(cur.fetchone()[0])
            if not rows and top:
                # frames stored before epochs existed: they are the legacy epoch ""
                rows[""] = (0, 0, top)
                cur.execute(self._q("INSERT INTO epochs VALUES (?, '', 0, 0, ?, 0)"),
                            (camera_id, top))
            if epoch not in rows:
                high = max([top, *(off + last for _, off, last in rows.values())])
                gen = max((g for g, _, _ in rows.values()), default=-1) + 1
                cur.execute(self._q("INSERT INTO epochs VALUES (?, ?, ?, ?, 0, ?)"),
                            (camera_id, epoch, gen, high, now_us))
                rows[epoch] = (gen, high, 0)
            gen, offset, last = rows[epoch]
            newest = gen == max(g for g, _, _ in rows.values())
        return EpochInfo(epoch, offset, last, newest)

    # -- frames --------------------------------------------------------------------------------
    def last_frame_id(self, camera_id: str) -> int:
        rows = self._all("SELECT COALESCE(MAX(frame_id), 0) FROM frames WHERE camera_id = ?",
                         (camera_id,))
        return int(rows[0][0])

    def has_frame(self, camera_id: str, frame_id: int) -> bool:
        return bool(self._all("SELECT 1 FROM frames WHERE camera_id = ? AND frame_id = ?",
                              (camera_id, frame_id)))

    def stored_ids(self, camera_id: str, frame_ids: Sequence[int]) -> set[int]:
        """Which of ``frame_ids`` of a camera are stored (one query for a batch)."""
        if not frame_ids:
            return set()
        marks = ", ".join("?" * len(frame_ids))
        rows = self._all(f"SELECT frame_id FROM frames WHERE camera_id = ? AND frame_id IN "
                         f"({marks})", (camera_id, *frame_ids))
        return {int(r[0]) for r in rows}

    def add_frames(self, frames: Sequence[FrameRow]) -> list[bool]:
        """Insert in one transaction; per frame, True when it was new. Also moves each epoch's
        high-water mark, in the same transaction."""
        out = []
        marks: dict[tuple[str, str], int] = {}
        with self._tx() as cur:
            for f in frames:
                edge_id = f.edge_frame_id or f.frame_id
                cur.execute(self._q(
                    f"INSERT INTO frames ({_FRAME_COLS}, base_layer) VALUES (?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, ?, ?, ?) ON CONFLICT (camera_id, frame_id) DO NOTHING"),
                    (f.camera_id, f.frame_id, f.capture_us, f.arrival_us, f.stored_us, f.width,
                     f.height, f.base_bytes, f.bpp, detections_json(f.detections), f.epoch,
                     edge_id, f.base_layer or b""))
                new = cur.rowcount == 1
                out.append(new)
                key = (f.camera_id, f.epoch)
                marks[key] = max(marks.get(key, 0), edge_id)
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
                                     detector_runs_json(f.analysed_by)))
            for (cam, epoch), last in marks.items():
                cur.execute(self._q("UPDATE epochs SET last_frame_id = ? WHERE camera_id = ? "
                                    "AND epoch = ? AND last_frame_id < ?"),
                            (last, cam, epoch, last))
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
                r.base_model_id, r.base_digest = a[0], a[1]
                r.analysed_by = [DetectorRun.from_dict(d) for d in json.loads(a[2])]
        return list(rows)

    @staticmethod
    def _row(r: tuple, with_layer: bool = False) -> FrameRow:
        layer = bytes(r[12]) if with_layer else None
        cached = bool(r[13 if with_layer else 12])
        return FrameRow(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]),
                        int(r[7]), float(r[8]), detections_from_json(r[9]), layer, r[10],
                        int(r[11]) or int(r[1]), cached)

    def _cols(self, with_layer: bool) -> str:
        cols = ", ".join(f"f.{c.strip()}" for c in _FRAME_COLS.split(","))
        return cols + (", f.base_layer" if with_layer else "") + f", {_CACHED}"

    def frame(self, camera_id: str, frame_id: int, with_layer: bool = False) -> FrameRow | None:
        rows = self._all(f"SELECT {self._cols(with_layer)} FROM frames f WHERE f.camera_id = ? "
                         "AND f.frame_id = ?", (camera_id, frame_id))
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
            args.append(min(q.after_frame_id, _HIGH_BIT))
        if q.before_frame_id:
            where.append("f.frame_id < ?")
            args.append(min(q.before_frame_id, _HIGH_BIT))
        join = ""
        if q.class_name:
            join = ("JOIN frame_classes k ON k.camera_id = f.camera_id AND k.frame_id = "
                    "f.frame_id AND k.class_name = ?")
            args.insert(0, q.class_name)
        sql = (f"SELECT {self._cols(False)} FROM frames f {join} "
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
                       enhancement_bytes: int, capture_us: int = 0) -> None:
        with self._tx() as cur:
            cur.execute(self._q("INSERT INTO human_views (camera_id, frame_id, png, "
                                "enhancement_bytes, capture_us, nbytes) VALUES (?, ?, ?, ?, ?, "
                                "?) ON CONFLICT (camera_id, frame_id) DO NOTHING"),
                        (camera_id, frame_id, png, enhancement_bytes, capture_us, len(png)))

    # -- retention -----------------------------------------------------------------------------
    def _cutoff(self, cur: Any, table: str, size_col: str, camera_id: str,
                max_bytes: int) -> tuple[int, int] | None:
        """(capture_us, frame_id) of the newest row to delete so that the camera's rows in
        ``table`` fit in ``max_bytes`` (newest kept first); None when they fit."""
        cur.execute(self._q(
            f"SELECT capture_us, frame_id FROM (SELECT capture_us, frame_id, SUM({size_col}) "
            "OVER (ORDER BY capture_us DESC, frame_id DESC) AS kept FROM "
            f"{table} WHERE camera_id = ?) t WHERE kept > ? ORDER BY capture_us DESC, "
            "frame_id DESC LIMIT 1"), (camera_id, max_bytes))
        row = cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def apply_retention(self, policy: RetentionPolicy, now_us: int) -> dict[str, int]:
        """Delete what is over the bounds, per camera, oldest first; returns counts deleted
        (``frames``, ``human_views``). A frame's cached human view, thumbnail and class index
        go with it."""
        counts = {"frames": 0, "human_views": 0}
        if not policy.enabled:
            return counts
        cams = [r[0] for r in self._all("SELECT DISTINCT camera_id FROM frames")]
        for cam in cams:
            with self._tx() as cur:
                conds: list[tuple[str, tuple]] = []
                if policy.frame_age_s:
                    conds.append(("capture_us < ?", (now_us - int(policy.frame_age_s * 1e6),)))
                if policy.frame_bytes:
                    cut = self._cutoff(cur, "frames", "base_bytes", cam, policy.frame_bytes)
                    if cut is not None:
                        conds.append(("(capture_us < ? OR (capture_us = ? AND frame_id <= ?))",
                                      (cut[0], cut[0], cut[1])))
                if conds:
                    where = " OR ".join(c for c, _ in conds)
                    args = tuple(a for _, vals in conds for a in vals)
                    sub = f"SELECT frame_id FROM frames WHERE camera_id = ? AND ({where})"
                    for table in ("frame_classes", "thumbnails", "frame_analysis", "human_views"):
                        cur.execute(self._q(f"DELETE FROM {table} WHERE camera_id = ? AND "
                                            f"frame_id IN ({sub})"), (cam, cam, *args))
                    counts["human_views"] += max(0, cur.rowcount)  # (the last: human_views)
                    cur.execute(self._q(f"DELETE FROM frames WHERE camera_id = ? AND ({where})"),
                                (cam, *args))
                    counts["frames"] += max(0, cur.rowcount)
                hconds: list[tuple[str, tuple]] = []
                if policy.human_view_age_s:
                    hconds.append(("capture_us < ?",
                                   (now_us - int(policy.human_view_age_s * 1e6),)))
                if policy.human_view_bytes:
                    cut = self._cutoff(cur, "human_views", "nbytes", cam,
                                       policy.human_view_bytes)
                    if cut is not None:
                        hconds.append(("(capture_us < ? OR (capture_us = ? AND frame_id <= ?))",
                                       (cut[0], cut[0], cut[1])))
                if hconds:
                    where = " OR ".join(c for c, _ in hconds)
                    cur.execute(self._q(f"DELETE FROM human_views WHERE camera_id = ? AND "
                                        f"({where})"),
                                (cam, *(a for _, vals in hconds for a in vals)))
                    counts["human_views"] += max(0, cur.rowcount)
        return counts

    def usage(self, camera_id: str) -> tuple[int, int]:
        """(base-layer bytes, cached human-view bytes) a camera holds."""
        f = self._all("SELECT COALESCE(SUM(base_bytes), 0) FROM frames WHERE camera_id = ?",
                      (camera_id,))
        h = self._all("SELECT COALESCE(SUM(nbytes), 0) FROM human_views WHERE camera_id = ?",
                      (camera_id,))
        return int(f[0][0]), int(h[0][0])

    # -- operations (metrics) ----------------------------------------------------------------
    def camera_presence(self) -> list[tuple[str, str, bool]]:
        """(camera id, instance, online) of every camera, without counting frames: cheap
        enough to read every half minute at 10,000 cameras (the per-camera gauges)."""
        return [(r[0], r[1], bool(r[2]))
                for r in self._all("SELECT camera_id, instance, online FROM cameras")]

    def size_bytes(self) -> int:
        """The database's size on disk (SQLite pages, PostgreSQL's pg_database_size)."""
        if self.dialect == "postgresql":
            return int(self._all("SELECT pg_database_size(current_database())")[0][0])
        pages = self._all("PRAGMA page_count")[0][0]
        return int(pages) * int(self._all("PRAGMA page_size")[0][0])


class _SqliteStore(Store):
    """One connection, serialized by a lock: the cloud batches writes, one writer is enough."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        super().__init__("?")

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._lock:
            yield self._conn

    _TRANSIENT = ("locked", "busy", "disk", "i/o", "unable to open", "readonly")

    def _unavailable(self, exc: BaseException) -> bool:
        # locked, disk I/O error, disk full: the file is there but cannot be used now (a bad
        # statement is an OperationalError too, and is not retried)
        return isinstance(exc, sqlite3.OperationalError) and any(
            k in str(exc).lower() for k in self._TRANSIENT)

    def _describe(self) -> str:
        return f"SQLite database {self.path}"

    def _columns(self, cur: Any) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for table in {t for t, _, _ in _ADDED_COLUMNS}:
            cur.execute(f"PRAGMA table_info({table})")
            out[table] = {r[1] for r in cur.fetchall()}
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PostgresStore(Store):
    """A pool of connections, each checked before use; broken ones are replaced in the
    background, so a database restart costs the frames in flight a retry, nothing more.

    The pool's reconnect attempts back off without bound; giving a slot up after
    ``reconnect_timeout_s`` lets the next request start a fresh attempt, so however long the
    outage, the database is found again within seconds of its return."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout_s: float = 10.0,
                 checkout_timeout_s: float = 5.0, reconnect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as e:
            raise ValueError("PostgreSQL storage needs psycopg and psycopg_pool: pip install "
                             "'icm-scalable[cloud]' (psycopg[binary], psycopg-pool)") from e
        self._psycopg = psycopg
        self._pool_timeout = PoolTimeout
        self.url = redact_url(url)
        self._scrubber = _Scrubber([url, *url_secrets(url)], self.url)
        self._checkout_timeout = checkout_timeout_s
        for name in ("psycopg", "psycopg.pool"):
            logging.getLogger(name).addFilter(self._scrubber)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max(1, pool_size), open=False,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            check=ConnectionPool.check_connection, reconnect_timeout=reconnect_timeout_s,
            name=f"icm-{secrets.token_hex(3)}")
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as e:
            self._pool.close()
            raise ValueError(f"cannot connect to PostgreSQL at {self.url}: "
                             f"{self._clean(e)}") from None
        try:
            super().__init__("%s")
        except Exception:
            self.close()
            raise

    def _clean(self, e: BaseException) -> str:
        return self._scrubber.scrub(super()._clean(e))

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._pool.connection(timeout=self._checkout_timeout) as conn:
            yield conn

    def _unavailable(self, exc: BaseException) -> bool:
        pg = self._psycopg
        return isinstance(exc, (pg.OperationalError, pg.InterfaceError, self._pool_timeout))

    def _describe(self) -> str:
        return f"PostgreSQL at {self.url}"

    def _columns(self, cur: Any) -> dict[str, set[str]]:
        cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE "
                    "table_schema = current_schema()")
        out: dict[str, set[str]] = {}
        for table, column in cur.fetchall():
            out.setdefault(table, set()).add(column)
        return out

    def close(self) -> None:
        self._pool.close()
        for name in ("psycopg", "psycopg.pool"):
            logging.getLogger(name).removeFilter(self._scrubber)


def open_store(url: str) -> Store:
    """``sqlite:///path/to/db``, a plain file path, or ``postgresql://user@host/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        return _PostgresStore(url)
    # sqlite:///relative/path or sqlite:////absolute/path (the usual URL forms), or a path
    return _SqliteStore(url.removeprefix("sqlite:///"))
