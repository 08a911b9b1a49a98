"""Service plumbing shared by the edge encoder and the cloud decoder.

The gRPC stubs of ``protos/icm/v1/icm.proto`` (generated at build time, never committed), TLS
material, the Prometheus endpoint and reconnect backoff live here so that both services use the
same mechanism.
"""

from .protos import pb, pb_grpc

__all__ = ["pb", "pb_grpc"]
