"""Container health check (exec form, no shell): ``healthcheck.py grpc HOST:PORT`` asks the
standard gRPC health service (``grpc.health.v1.Health/Check``) and exits 0 only on SERVING;
``healthcheck.py grpc-plaintext HOST:PORT`` does the same without TLS whatever the environment
says (the edge's own health server, which is plaintext, in a container whose ``ICM_TLS_CA``
is for the cloud); ``healthcheck.py http URL`` exits 0 on an HTTP 200.

TLS for the gRPC check comes from the same environment the service reads: ``ICM_TLS_CA``
verifies the server, whose certificate is checked against ``ICM_HEALTH_SERVER_NAME`` (default:
the first DNS name of ``ICM_TLS_CERT``, i.e. this instance's own certificate). Point it at the
analyst port, which does not ask for a client certificate.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def check_grpc(target: str, timeout: float = 4.0, tls: bool = True) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ca = os.environ.get("ICM_TLS_CA") if tls else None
    if ca:
        from icm_rpc.tls import certificate_name  # the service's own package, in the image

        opts = []
        name = os.environ.get("ICM_HEALTH_SERVER_NAME") or (
            certificate_name(os.environ["ICM_TLS_CERT"]) if os.environ.get("ICM_TLS_CERT") else "")
        if name:
            opts.append(("grpc.ssl_target_name_override", name))
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(target, creds, opts)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def check_http(url: str, timeout: float = 4.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status == 200


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("grpc", "grpc-plaintext", "http"):
        print("usage: healthcheck.py grpc HOST:PORT | grpc-plaintext HOST:PORT | http URL",
              file=sys.stderr)
        return 2
    try:
        if argv[0] == "http":
            ok = check_http(argv[1])
        else:
            ok = check_grpc(argv[1], tls=argv[0] == "grpc")
    except Exception as e:  # any failure is "unhealthy", with the reason in the log
        print(f"unhealthy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print("unhealthy: not serving", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
