"""The analyst web console (``icm console``): cameras, frames with their detections, human
views and live detections in a browser, in front of the cloud"s Analyst gRPC API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ConsoleConfig, create_app
    from .server import ConsoleServer, login_url, new_token

# public name → its module, imported on first use, so that `icm console --help` never loads FastAPI
_HOME = {
    "ConsoleConfig": "app",
    "ConsoleServer": "server",
    "create_app": "app",
    "login_url": "server",
    "new_token": "server",
}
__all__ = ["ConsoleConfig", "ConsoleServer", "create_app", "login_url", "new_token"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
