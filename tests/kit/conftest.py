"""Fixtures that run the echo service (a service built on the kit) as a real process."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from .harness import ServiceProcess

StartService = Callable[..., ServiceProcess]


@pytest.fixture(scope="module")
def echo() -> Iterator[ServiceProcess]:
    """One serving echo process shared by a module's tests (starting one costs about a second)."""
    service = ServiceProcess().wait_serving()
    yield service
    service.stop()


@pytest.fixture
def start_service() -> Iterator[StartService]:
    """Start echo processes with given settings; each is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(settings: Mapping[str, str] | None = None, *, wait: bool = True) -> ServiceProcess:
        service = ServiceProcess(settings)
        started.append(service)
        return service.wait_serving() if wait else service

    yield start
    for service in started:
        service.stop()
