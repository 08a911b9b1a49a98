"""The edge encoder service: captures frames, encodes base layers (and enhancement layers,
eagerly or on request), spools them durably and streams them to the cloud."""

from .service import EdgeConfig, EdgeService

__all__ = ["EdgeConfig", "EdgeService"]
