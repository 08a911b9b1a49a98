"""A gRPC health + reflection server for a process that is otherwise only a client (the edge),
so that orchestrators probe both services the same way."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = ["HealthServer"]


class HealthServer:
    """``grpc.health.v1.Health`` on ``address``; :meth:`set` flips a service's status."""

    def __init__(self, address: str) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(ThreadPoolExecutor(4, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")

    def start(self) -> HealthServer:
        self.server.start()
        return self

    def set(self, service: str, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.set(service, status)

    def stop(self) -> None:
        self.servicer.enter_graceful_shutdown()
        self.server.stop(1)
