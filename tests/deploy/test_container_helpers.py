"""The scripts the images run: the health check and the bucket creation, against real servers."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .conftest import ROOT

HEALTHCHECK = ROOT / "deploy/docker/healthcheck.py"
CREATE_BUCKET = ROOT / "deploy/docker/create_bucket.py"


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(script), *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def grpc_health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(grace=None)


def test_grpc_check_follows_the_servers_health_status(
    grpc_health_server: tuple[int, health.HealthServicer],
) -> None:
    port, servicer = grpc_health_server
    env = {"FORGELINE_TEST_GRPC_PORT": str(port)}
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run(HEALTHCHECK, "grpc", "FORGELINE_TEST", env=env).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run(HEALTHCHECK, "grpc", "FORGELINE_TEST", env=env).returncode == 1


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_check_passes_on_a_healthy_server_and_fails_on_a_closed_port() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        assert run(HEALTHCHECK, "http", "FORGELINE_TEST",
                   env={"FORGELINE_TEST_HTTP_PORT": port}).returncode == 0  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    closed = run(HEALTHCHECK, "http", "FORGELINE_TEST", env={"FORGELINE_TEST_HTTP_PORT": port})
    assert closed.returncode == 1
    assert "http health check failed" in closed.stderr


def test_bucket_creation_is_idempotent_against_an_s3_server() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "FORGELINE_BUCKET_ENDPOINT": f"{host}:{port}",
            "FORGELINE_BUCKET_ACCESS_KEY": "test",
            "FORGELINE_BUCKET_SECRET_KEY": "test-secret",
            "FORGELINE_BUCKET_NAME": "forgeline-test",
        }
        first = run(CREATE_BUCKET, env=env)
        assert first.returncode == 0, first.stderr
        assert "bucket forgeline-test created" in first.stdout
        second = run(CREATE_BUCKET, env=env)
        assert "bucket forgeline-test exists" in second.stdout
    finally:
        server.stop()
