"""The edge encoder service: captures frames, encodes base layers (and enhancement layers,
eagerly or on request), spools them durably and streams them to the cloud."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EdgeConfig
    from .service import EdgeService

# public name → its module, imported on first use, so that `icm edge --help` never loads torch
_HOME = {
    "EdgeConfig": "config",
    "EdgeService": "service",
}
__all__ = ["EdgeConfig", "EdgeService"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
