"""The /metrics endpoint helpers, and servers side by side in one process."""

from __future__ import annotations

import asyncio
import urllib.error

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from forgeline_kit.grpc.server import GrpcService
from forgeline_kit.metrics import start_metrics_server

from .echo_service import EchoSettings
from .harness import labels, scrape


def test_metrics_server_serves_its_collectors_on_a_free_port() -> None:
    collectors = CollectorRegistry()
    Counter("forgeline_widgets", "Widgets made.", registry=collectors).inc(2)

    server = start_metrics_server("127.0.0.1", 0, collectors)
    try:
        assert server.port > 0
        assert scrape(server.url)[("forgeline_widgets_total", labels())] == 2
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)


async def test_two_services_in_one_process_keep_their_own_metrics() -> None:
    settings = EchoSettings(grpc_port=0, metrics_port=0, shutdown_grace_seconds=1)
    services = [GrpcService(settings, [], collectors=CollectorRegistry()) for _ in range(2)]
    for service in services:
        await service.start()
    try:
        first, second = services
        assert first.grpc_port != second.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        checks = (
            "grpc_server_handled_total",
            labels(
                grpc_type="unary",
                grpc_service="grpc.health.v1.Health",
                grpc_method="Check",
                grpc_code="OK",
            ),
        )
        urls = [f"http://127.0.0.1:{s.metrics_port}/metrics" for s in services]
        first_scrape, second_scrape = [await asyncio.to_thread(scrape, url) for url in urls]
        assert first_scrape[checks] == 1
        assert checks not in second_scrape
    finally:
        await asyncio.gather(*(service.stop() for service in services))
