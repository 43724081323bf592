"""Container health check for Forgeline images (Docker HEALTHCHECK and compose healthcheck).

    healthcheck.py grpc FORGELINE_REGISTRY   grpc.health.v1 Check on $FORGELINE_REGISTRY_GRPC_PORT
    healthcheck.py http FORGELINE_GATEWAY    GET /health on $FORGELINE_GATEWAY_HTTP_PORT

It reads the port from the same variable the service reads, so a changed port needs no change
here. Exit status 0 means healthy, 1 unhealthy (what Docker expects). grpc_health_probe would
be the usual tool, but it is a downloaded binary; this uses the packages the image already has.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORTS = {"grpc": 50051, "http": 8080}
TIMEOUT_SECONDS = 3.0


def _port(kind: str, prefix: str) -> int:
    variable = f"{prefix}_{kind.upper()}_PORT"
    return int(os.environ.get(variable, DEFAULT_PORTS[kind]))


def check_grpc(port: int) -> bool:
    """True when the server answers SERVING for the whole server (empty service name)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            print(f"grpc health check failed: {error.code()}", file=sys.stderr)
            return False
    serving: bool = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving


def check_http(port: int) -> bool:
    """True when GET /health answers 200."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/health", timeout=TIMEOUT_SECONDS
        ) as response:
            ok: bool = response.status == 200
            return ok
    except OSError as error:
        print(f"http health check failed: {error}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    """Run one check; returns the exit status."""
    if len(argv) != 2 or argv[0] not in DEFAULT_PORTS:
        print("usage: healthcheck.py grpc|http ENV_PREFIX", file=sys.stderr)
        return 2
    kind, prefix = argv
    port = _port(kind, prefix)
    healthy = check_grpc(port) if kind == "grpc" else check_http(port)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
