"""The cloud decoder service: receives base layers from every camera, decodes the machine
images, runs analytics, stores frames and detections, and serves analysts (human views on
demand, fetched from the camera's edge over its stream)."""

from .server import CloudConfig, CloudServer, serve

__all__ = ["CloudConfig", "CloudServer", "serve"]
