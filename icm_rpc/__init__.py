"""Service plumbing shared by the edge encoder and the cloud decoder.

The gRPC stubs of ``protos/icm/v1/icm.proto`` (generated at build time, never committed), TLS
material, the Prometheus endpoint and reconnect backoff live here so that both services use the
same mechanism.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protos import pb, pb_grpc

__all__ = ["pb", "pb_grpc"]


def __getattr__(name: str) -> Any:
    """Load the stubs on first use, so that ``icm certs`` (TLS files only) never needs them."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import protos

    value = getattr(protos, name)
    globals()[name] = value
    return value
