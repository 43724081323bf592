"""Running the gateway for tests: the real app under uvicorn on a loopback port, in a thread of
the test process (so tests can look at its routing table and the processes it started), and its
metrics collectors on the kit's metrics listener, a loopback port of its own, as
``forgeline-gateway`` serves them (tests/gateway/test_main.py runs that command itself)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from database_urls import database_url
from fakes.server import ReadyServer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from forgeline_gateway.app import BackendFactory, create_app, default_backends
from forgeline_gateway.security.keys import Scope, create_key
from forgeline_gateway.settings import GatewaySettings
from forgeline_gateway.store import Store
from forgeline_kit.metrics import MetricsServer, start_service_metrics

START_DEADLINE_S = 60.0


class Gateway:
    """One gateway serving on 127.0.0.1 (a free port) until `stop`."""

    def __init__(
        self,
        database: Path,
        settings: Mapping[str, Any] | None = None,
        backends: BackendFactory = default_backends,
    ) -> None:
        self.settings = GatewaySettings(
            http_host="127.0.0.1",
            http_port=0,
            metrics_port=0,
            database_url=database_url(database),
            **dict(settings or {}),
        )
        self.collectors = CollectorRegistry()
        self.app: FastAPI = create_app(self.settings, collectors=self.collectors, backends=backends)
        self._server = ReadyServer(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=0,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.metrics: MetricsServer | None = None

    def _run(self) -> None:
        # The event loop `forgeline-gateway` serves on (uvloop), so tests exercise the same one.
        self.loop = uvloop.new_event_loop()
        try:
            self.loop.run_until_complete(self._server.serve())
        finally:
            self._server.ready.set()  # a failed start must not leave `start` waiting
            self.loop.close()

    def start(self) -> Gateway:
        self.metrics = start_service_metrics(self.settings, self.collectors)
        self._thread.start()
        if not self._server.ready.wait(START_DEADLINE_S) or not self._server.started:
            raise RuntimeError("the gateway did not start; see the log above")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coroutine: Any, timeout: float = 120.0) -> Any:
        """Run a coroutine on the gateway's event loop (to use its state safely)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def metrics_url(self) -> str:
        """Where Prometheus would scrape this gateway."""
        assert self.metrics is not None, "the gateway has not started"
        return self.metrics.url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def make_key(database: Path, *scopes: Scope, name: str = "test") -> str:
    """A new API key with `scopes`, written straight into the gateway's database (named by
    its path, as `Gateway` takes it)."""
    store = Store.open(database_url(database))
    try:
        key, _ = create_key(store, name, set(scopes))
        return key
    finally:
        store.close()
