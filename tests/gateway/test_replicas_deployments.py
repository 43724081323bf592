"""Deployments shared by gateway replicas on one database: one created on a replica is served by
the others within `deployment_sync_seconds` (a vLLM deployment through the same server, a
llama.cpp deployment by llama-server processes of each replica's own), and one deleted on a
replica stops being served by the others."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm

from .conftest import Served, StartGateway

SYNC_SECONDS = 0.3
FAKE_BASE = "org/fake-base"
NAMES = ("fake", "tiny")


@pytest.fixture
def fake_vllm() -> Iterator[FakeServer]:
    server = FakeServer(FakeVllm(FAKE_BASE).app).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(start_gateway: StartGateway, fake_vllm: FakeServer, tmp_path: Path) -> list[Served]:
    settings = {"vllm_urls": [fake_vllm.url], "deployment_sync_seconds": SYNC_SECONDS}
    database = tmp_path / "shared.sqlite3"
    return [start_gateway(settings, database=database) for _ in range(2)]


def _within(seconds: float, check: Callable[[], bool]) -> float:
    """How long `check` took to hold, failing after `seconds`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the time"
        time.sleep(0.05)
    return time.monotonic() - started


def _names(served: Served) -> set[str]:
    return {d["name"] for d in served.admin("GET", "/v1/deployments").json()["data"]}


def _answers(served: Served, model: str) -> bool:
    response = httpx.post(
        f"{served.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {served.inference_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=60,
        trust_env=False,
    )
    return response.status_code == 200


def test_a_deployment_made_on_one_replica_is_served_by_the_other(
    replicas: list[Served], tiny_gguf: Path
) -> None:
    first, second = replicas
    first.deploy({"name": "fake", "backend": "vllm", "base_model": FAKE_BASE})
    first.deploy({"name": "tiny", "backend": "llamacpp", "gguf": str(tiny_gguf)})

    _within(60, lambda: {"fake", "tiny"} <= _names(second))
    assert _answers(second, "fake")
    assert _answers(second, "tiny")
    (tiny,) = [
        d for d in second.admin("GET", "/v1/deployments").json()["data"] if d["name"] == "tiny"
    ]
    assert (tiny["status"], tiny["instances"]) == ("ready", 1)
    # Each replica serves it from a llama-server of its own; the vLLM server is the same one.
    urls = [
        {name: [i.url for i in s.gateway.app.state.router.get(name).instances] for name in NAMES}
        for s in replicas
    ]
    assert urls[0]["tiny"] != urls[1]["tiny"]
    assert urls[0]["fake"] == urls[1]["fake"]

    assert first.admin("DELETE", "/v1/deployments/fake").status_code == 204
    _within(SYNC_SECONDS * 3 + 2, lambda: "fake" not in _names(second))
    assert not _answers(second, "fake")
    assert _answers(second, "tiny")
