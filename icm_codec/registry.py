"""Where model packages live and which one to use: one registry, one lookup rule.

Search path: explicit file path > directories in ``$ICM_MODEL_PATH`` (``:``-separated) > the
packages shipped inside the library (``icm_codec/weights``). ``weights/index.json`` names the
default package of each kind. Packages are indexed by model id and by digest, so a decoder can
find the exact weights a bitstream names.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelPackageError
from .kinds import HUMAN_LAYER_KINDS, LayerKind

__all__ = ["HUMAN_LAYER_KINDS", "PackageInfo", "default_package", "find_package", "list_packages",
           "search_dirs"]

SHIPPED_DIR = Path(__file__).parent / "weights"
PACKAGE_SUFFIX = ".icmpkg"


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    model_id: str
    digest: str
    kind: str  # a LayerKind label


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("ICM_MODEL_PATH", "").split(os.pathsep) if p]
    return [*extra, SHIPPED_DIR]


def _info(path: Path) -> PackageInfo | None:
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            config = json.loads(zf.read("config.json"))
        return PackageInfo(path, str(manifest["model_id"]), str(manifest["digest"]),
                           LayerKind.parse(str(config["kind"])).label)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def list_packages(dirs: list[Path] | None = None) -> list[PackageInfo]:
    out = []
    for d in dirs if dirs is not None else search_dirs():
        if d.is_dir():
            for p in sorted(d.rglob(f"*{PACKAGE_SUFFIX}")):
                info = _info(p)
                if info is not None:
                    out.append(info)
    return out


def find_package(name: str | os.PathLike[str],
                 kind: LayerKind | str | tuple[LayerKind, ...] | None = None) -> Path:
    """A file path, a model id or a digest (prefix of at least 8 hex digits) -> package path;
    ``kind`` (one kind or several) restricts what a model id or digest may name."""
    p = Path(name)
    if p.is_file():
        return p
    s = str(name)
    kinds = (kind,) if isinstance(kind, LayerKind | str) else kind
    want = None if kinds is None else {LayerKind.parse(k).label for k in kinds}
    other = None
    for info in list_packages():
        named = info.model_id == s or (len(s) >= 8 and info.digest.startswith(s.lower()))
        if named and (want is None or info.kind in want):
            return info.path
        other = other or (info if named else None)
    if other is not None and want is not None:
        raise ModelPackageError(f"model package {s!r} is a {other.kind} layer, not "
                                f"{' or '.join(sorted(want))}")
    raise ModelPackageError(
        f"no model package {s!r} found (searched: {', '.join(map(str, search_dirs()))}); "
        "pass a .icmpkg path, set ICM_MODEL_PATH, or train one with `icm train`")


def default_package(kind: LayerKind | str) -> Path:
    """The package ``weights/index.json`` names as default for ``kind``; the default
    ``enhancement`` layer is any of :data:`HUMAN_LAYER_KINDS`."""
    kind = LayerKind.parse(kind).label
    index = SHIPPED_DIR / "index.json"
    try:
        name = json.loads(index.read_text())["defaults"][kind]
    except (OSError, KeyError, ValueError) as e:
        raise ModelPackageError(
            f"no default {kind} model is installed; pass --model PATH (a .icmpkg package), "
            "or train one with `icm train`") from e
    return find_package(name, HUMAN_LAYER_KINDS if kind == LayerKind.ENHANCEMENT.label else kind)
