"""Detectors adapted to machine images: one metadata record per weight file, and where to find them.

An adapted detector is an Ultralytics weight file fine-tuned (``icm adapt-detector``) on images
decoded from real base layers. Beside it lies its record, ``<id>.json`` — the one carrier of the
weights' facts, like a codec package's model card::

    yolo11n-on-base-lite-l0.013.pt      the weights (Ultralytics checkpoint)
    yolo11n-on-base-lite-l0.013.json    the record: source detector, base package digests,
                                        data, epochs, wall time, measured accuracy

The base package digests tie the weights to the exact codec whose machine images they learned,
as a layer's header ties it to its package: the cloud serves an adapted detector only for frames
whose base layer names one of those digests (:mod:`analytics.served`), and only in place of the
exact stock weights it was adapted from (SHA-256 of the source file).

Search path (first match wins): folders given by the caller (``icm cloud --adapted``), then
``$ICM_ADAPTED_PATH`` (``:``-separated), then the records shipped in ``analytics/adapted/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import AnalyticsError
from .weights import file_sha256

__all__ = ["ADAPTED_FORMAT", "ENV_ADAPTED", "SHIPPED_ADAPTED_DIR", "AdaptedDetector",
           "AdaptedRecord", "adapted_dirs", "find_adapted", "load_adapted", "write_card"]

ADAPTED_FORMAT = "icm-adapted-detector"
ADAPTED_VERSION = 1
ENV_ADAPTED = "ICM_ADAPTED_PATH"
SHIPPED_ADAPTED_DIR = Path(__file__).parent / "adapted"
_MAX_RECORD_BYTES = 1 << 20


@dataclass
class AdaptedRecord:
    """The facts of one adapted weight file (``<id>.json`` beside ``<id>.pt``).

    ``bases``: ``[{"model_id", "digest" (64 hex), "lambda", "trained"}]``; ``source``:
    ``{"name", "file", "sha256"}``; ``weights``: ``{"file", "sha256", "bytes"}``. ``data``,
    ``dataset``, ``training`` and ``accuracy`` are free-form dictionaries written by
    ``icm adapt-detector`` (see docs/analytics.md).
    """

    id: str
    task: str
    source: dict[str, Any]
    weights: dict[str, Any]
    bases: list[dict[str, Any]]
    data: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    command: str = ""

    @property
    def source_name(self) -> str:
        return str(self.source.get("name", ""))

    @property
    def base_digests(self) -> list[str]:
        """Full hex digests of the base packages the weights were adapted to."""
        return [str(b["digest"]).lower() for b in self.bases]

    def adapted_to(self, digest: str | bytes) -> bool:
        """True for a base package digest (hex of any length >= 16, or a layer header's bytes)."""
        d = digest.hex() if isinstance(digest, bytes) else str(digest).lower()
        return len(d) >= 16 and any(full.startswith(d) or d.startswith(full)
                                    for full in self.base_digests)

    def to_dict(self) -> dict[str, Any]:
        return {"format": ADAPTED_FORMAT, "version": ADAPTED_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "record") -> AdaptedRecord:
        if d.get("format") != ADAPTED_FORMAT:
            raise AnalyticsError(f"{where} is not an adapted-detector record")
        if int(d.get("version", 0)) > ADAPTED_VERSION:
            raise AnalyticsError(f"{where}: record version {d.get('version')} is newer than this "
                                 f"library reads ({ADAPTED_VERSION}): upgrade icm")
        try:
            rec = cls(id=str(d["id"]), task=str(d["task"]), source=dict(d["source"]),
                      weights=dict(d["weights"]), bases=[dict(b) for b in d["bases"]],
                      data=list(d.get("data", [])), dataset=dict(d.get("dataset", {})),
                      training=dict(d.get("training", {})),
                      accuracy=dict(d.get("accuracy", {})), created=str(d.get("created", "")),
                      command=str(d.get("command", "")))
            for b in rec.bases:
                bytes.fromhex(str(b["digest"]))
            _ = rec.source["name"], rec.weights["file"], rec.weights["sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise AnalyticsError(f"{where}: malformed adapted-detector record ({e!r})") from e
        if not rec.bases:
            raise AnalyticsError(f"{where}: the record names no base package")
        return rec

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON (atomically: a reader never sees half a record)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> AdaptedRecord:
        p = Path(path)
        try:
            if p.stat().st_size > _MAX_RECORD_BYTES:
                raise AnalyticsError(f"adapted-detector record too large: {p}")
            d = json.loads(p.read_text())
        except FileNotFoundError as e:
            raise AnalyticsError(f"adapted-detector record not found: {p}") from e
        except (OSError, ValueError) as e:
            raise AnalyticsError(f"cannot read adapted-detector record {p}: {e}") from e
        if not isinstance(d, dict):
            raise AnalyticsError(f"{p} is not an adapted-detector record")
        return cls.from_dict(d, str(p))


@dataclass(frozen=True)
class AdaptedDetector:
    """A record and its verified weight file."""

    record: AdaptedRecord
    weights: Path
    record_path: Path

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def sha256(self) -> str:
        return str(self.record.weights["sha256"])


def load_adapted(path: str | os.PathLike[str]) -> AdaptedDetector:
    """An adapted detector from its record (``.json``) or weights (``.pt``, record beside it).

    The weight file's SHA-256 must match the record: weights that were replaced or truncated
    are refused, never served under another detector's facts.
    """
    p = Path(path)
    rec_path = p if p.suffix == ".json" else p.with_suffix(".json")
    if p.suffix not in (".json", ".pt"):
        raise AnalyticsError(f"an adapted detector is a .pt file with its .json record: {p}")
    if not rec_path.is_file():
        if p.suffix == ".pt" and p.is_file():
            raise AnalyticsError(f"{p} has no record beside it ({rec_path.name}): is it an "
                                 "adapted detector (made by `icm adapt-detector`)?")
        raise AnalyticsError(f"adapted detector not found: {p}")
    rec = AdaptedRecord.load(rec_path)
    weights = rec_path.parent / str(rec.weights["file"])
    if not weights.is_file():
        raise AnalyticsError(f"{rec_path}: its weights file {weights.name} is missing")
    if file_sha256(weights) != str(rec.weights["sha256"]).lower():
        raise AnalyticsError(f"{weights} does not match its record {rec_path.name} (SHA-256 "
                             "differs): replaced or corrupted weights are not served")
    return AdaptedDetector(rec, weights.resolve(), rec_path.resolve())


def adapted_dirs(extra: list[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Folders searched for adapted detectors, in order: ``extra``, ``$ICM_ADAPTED_PATH``,
    the shipped ones."""
    env = [Path(p) for p in os.environ.get(ENV_ADAPTED, "").split(os.pathsep) if p]
    return [*(Path(d) for d in extra or ()), *env, SHIPPED_ADAPTED_DIR]


def _is_record(path: Path) -> bool:
    try:
        if path.stat().st_size > _MAX_RECORD_BYTES:
            return False
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("format") == ADAPTED_FORMAT


def find_adapted(dirs: list[Path] | None = None) -> list[AdaptedDetector]:
    """Every adapted detector on the search path, in search order (the same weights once).

    Other JSON files are ignored; a record that is malformed or whose weights are missing or
    changed is an error naming the file.
    """
    seen: set[str] = set()
    out = []
    for d in adapted_dirs() if dirs is None else dirs:
        if not d.is_dir():
            continue
        for rec_path in sorted(d.glob("*.json")):
            if not _is_record(rec_path):
                continue
            ad = load_adapted(rec_path)
            if ad.sha256 not in seen:
                seen.add(ad.sha256)
                out.append(ad)
    return out


def _fmt(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _headline(acc: dict[str, Any]) -> str:
    """``set: stock → adapted`` box mAP on the first base, and on originals."""
    parts = []
    for set_name, s in acc.get("sets", {}).items():
        for view in ("box/person", "box"):
            v = s.get(view)
            if not v:
                continue
            base = next(iter(v.get("bases", {}).values()), {})
            orig = v.get("original", {})
            parts.append(f"{set_name} {view}: base {_fmt(base.get('stock'))} → "
                         f"{_fmt(base.get('adapted'))}, original {_fmt(orig.get('stock'))} → "
                         f"{_fmt(orig.get('adapted'))}")
            break
    return "; ".join(parts) or "not measured"


def write_card(folder: str | Path) -> Path:
    """``README.md`` of a folder of adapted detectors: one row per record, from the records."""
    folder = Path(folder)
    recs = [load_adapted(p) for p in sorted(folder.glob("*.json")) if _is_record(p)]
    lines = ["# Adapted detectors", "",
             "Made by `icm adapt-detector` (docs/analytics.md): Ultralytics weights fine-tuned "
             "on machine images decoded from real base layers. The cloud serves each one for "
             "frames coded by the base packages it names (by digest), in place of its source "
             "detector. Each row is read from the `.json` record beside the weights; accuracy "
             "is mAP@[.50:.95] stock → adapted on held-out data.", "",
             "| id | source | task | base packages | images (train/val) | epochs | wall s | device "
             "| MB | sha256 | accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ad in recs:
        r = ad.record
        bases = ", ".join(f"{b.get('model_id', '?')} ({str(b['digest'])[:12]})" for b in r.bases)
        tr = r.training
        ds = r.dataset
        lines.append(
            f"| {r.id} | {r.source_name} ({str(r.source.get('sha256', ''))[:12]}) | {r.task} | "
            f"{bases} | {ds.get('train_images', '—')}/{ds.get('val_images', '—')} | "
            f"{tr.get('epochs', '—')} | {_fmt(tr.get('wall_seconds'), 0)} | "
            f"{tr.get('device', '—')} | {int(r.weights.get('bytes', 0)) / 1e6:.2f} | "
            f"{ad.sha256[:12]} | {_headline(r.accuracy)} |")
    commands = [f"- `{ad.id}`: `{ad.record.command}`" for ad in recs if ad.record.command]
    if commands:
        lines += ["", "Commands that made them:", "", *commands]
    out = folder / "README.md"
    out.write_text("\n".join(lines) + "\n")
    return out
