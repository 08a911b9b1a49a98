"""The cloud decoder service: receives base layers from every camera, decodes the machine
images, runs analytics, stores frames and detections, and serves analysts (human views on
demand, fetched from the camera's edge over its stream)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CloudConfig
    from .server import CloudServer, serve

# public name → its module, imported on first use, so that `icm analyst` (this package's
# cli and client) never loads the decoder's torch
_HOME = {
    "CloudConfig": "config",
    "CloudServer": "server",
    "serve": "server",
}
__all__ = ["CloudConfig", "CloudServer", "serve"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
