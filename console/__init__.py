"""The analyst web console (``icm console``): cameras, frames with their detections, human
views and live detections in a browser, in front of the cloud's Analyst gRPC API."""

from .app import ConsoleConfig, create_app
from .server import ConsoleServer, login_url, new_token

__all__ = ["ConsoleConfig", "ConsoleServer", "create_app", "login_url", "new_token"]
