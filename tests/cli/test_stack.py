"""The embedded stack (`make demo`, the CLI's `forgeline up`) survives a port taken between the
moment it is picked and the moment the service binds it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from forgeline_cli.stack import LocalStack, StackError
from forgeline_cli.stack_record import StackRecord
from forgeline_kit.llamacpp.server import free_port


@contextmanager
def _held(port: int) -> Iterator[None]:
    """Another process's listener on `port` (as a racing program would hold it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def test_a_taken_metrics_port_is_replaced(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    registry = stack.services["registry"]
    taken = registry.metrics_port
    try:
        with _held(taken):
            stack.start("registry")
            assert registry.alive()
            assert registry.metrics_port != taken
            assert "in use" in registry.log_tail(200)  # the first start really hit the port
    finally:
        stack.stop()


def test_a_taken_grpc_port_is_replaced_and_later_services_get_the_new_address(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "stack")
    registry, gateway = stack.services["registry"], stack.services["gateway"]
    taken = registry.port
    try:
        with _held(taken):
            stack.start("registry")
            assert registry.port != taken
            assert gateway.env["FORGELINE_GATEWAY_REGISTRY_TARGET"] == registry.target
            assert stack.registry_target == registry.target
    finally:
        stack.stop()


def test_a_port_chosen_by_the_caller_is_not_replaced(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        stack = LocalStack(tmp_path / "stack", gateway_port=port)
        try:
            stack.start("registry")
            with pytest.raises(StackError, match="gateway service exited at start") as error:
                stack.start("gateway")
            assert "address already in use" in str(error.value).lower()
            assert stack.services["gateway"].port == port
        finally:
            stack.stop()


def test_the_gateway_gets_a_metrics_port_of_its_own_replaced_when_taken(tmp_path: Path) -> None:
    port = free_port()
    stack = LocalStack(tmp_path / "stack", gateway_port=port)
    gateway = stack.services["gateway"]
    taken = gateway.metrics_port
    try:
        with _held(taken):
            stack.start("registry", "gateway")
        # The caller's API port is kept: only the metrics port, which nobody dials, is replaced.
        assert gateway.port == port
        assert gateway.metrics_port not in (taken, port)
        assert f"cannot serve /metrics on 127.0.0.1:{taken}" in gateway.log_tail(200)
        scrape = httpx.get(gateway.metrics_url, timeout=10, trust_env=False)
        assert "forgeline_gateway_requests_total" in scrape.text
        assert httpx.get(f"{stack.gateway_url}/metrics", trust_env=False).status_code == 404
        record = StackRecord.read(stack.state_dir)
        assert record is not None
        assert record.metrics["gateway"] == gateway.metrics_url
        assert stack.env_summary()["gateway /metrics"] == gateway.metrics_url
    finally:
        stack.stop()
