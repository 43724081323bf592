"""Fixtures for the gateway: gateways on loopback, API keys (tiny_gguf: tests/conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forgeline_gateway.app import BackendFactory, default_backends
from forgeline_gateway.security.keys import Scope

from .harness import Gateway, make_key


@pytest.fixture(scope="session", autouse=True)
def test_files_are_deployable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Gateways here serve GGUF files the tests write under pytest's temporary directory: it is
    the operator's MODEL_DIRS (a deployment may name no other file)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "FORGELINE_GATEWAY_MODEL_DIRS", json.dumps([str(tmp_path_factory.getbasetemp())])
        )
        yield


@dataclass
class Served:
    """A running gateway and keys to call it with."""

    gateway: Gateway
    admin_key: str
    inference_key: str

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str | None = None, **options: Any) -> openai.OpenAI:
        """The official SDK pointed at the gateway (no retries unless asked)."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 60.0)
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=key or self.inference_key, **options
        )

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the admin API with the admin key."""
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return httpx.request(
            method, f"{self.url}{path}", headers=headers, timeout=180.0, trust_env=False, **kwargs
        )

    def deploy(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        response = self.admin("POST", "/v1/deployments", json=dict(spec))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    @property
    def metrics_url(self) -> str:
        """The gateway's ``/metrics``, on its metrics port (not the API's)."""
        return self.gateway.metrics_url

    def metrics(self, settle_seconds: float = 5.0) -> str:
        """A scrape of the gateway's metrics port, taken once no inference request is in flight
        (or after `settle_seconds`). A request is counted after its last byte left, and the
        scrape is answered by another thread, not after the event loop's pending work: taken the
        moment a response arrived, it could come before that response is counted."""
        deadline = time.monotonic() + settle_seconds
        while True:
            text = httpx.get(self.metrics_url, timeout=10.0, trust_env=False).text
            in_flight = (
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "forgeline_gateway_in_flight_requests"
                for sample in family.samples
            )
            if not any(in_flight) or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def sample(self, name: str, **labels: str) -> float:
        """The sum of the scraped samples called `name` whose labels include `labels`."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


StartGateway = Callable[..., Served]


def _start(
    database: Path,
    settings: Mapping[str, Any] | None,
    backends: BackendFactory,
    started: list[Gateway],
) -> Served:
    admin_key = make_key(database, Scope.ADMIN, name="admin")
    inference_key = make_key(database, Scope.INFERENCE, name="app")
    gateway = Gateway(database, settings, backends)
    started.append(gateway)
    gateway.start()
    return Served(gateway, admin_key, inference_key)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways (each with its own database unless one is given); all stop at teardown."""
    started: list[Gateway] = []

    def start(
        settings: Mapping[str, Any] | None = None,
        *,
        database: Path | None = None,
        backends: BackendFactory = default_backends,
    ) -> Served:
        db = database or tmp_path / f"gateway-{len(started)}.sqlite3"
        return _start(db, settings, backends, started)

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Served]:
    """One gateway for a module, with the tiny model deployed for generation ("tiny", two
    llama-server processes) and for embeddings ("tiny-embed")."""
    started: list[Gateway] = []
    database = tmp_path_factory.mktemp("served") / "gateway.sqlite3"
    served = _start(database, {"key_cache_seconds": 0}, default_backends, started)
    try:
        served.deploy(
            {
                "name": "tiny",
                "backend": "llamacpp",
                "gguf": str(tiny_gguf),
                "replicas": 2,
                "parallel": 4,
                "metadata": {"base": "tiny-llama", "version": "1", "quantization": "f16"},
            }
        )
        served.deploy(
            {
                "name": "tiny-embed",
                "backend": "llamacpp",
                "gguf": str(tiny_gguf),
                "embeddings": True,
                "parallel": 2,
            }
        )
        yield served
    finally:
        for gateway in started:
            gateway.stop()
