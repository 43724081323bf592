"""Fixtures of the Evals API tests: one gateway for a module, over HTTP, with a real registry
(the Files API keeps eval files there), the tiny model on a real llama-server ("tiny"), and the
vLLM contract fake ("fake", deterministic answers: the words of `fakes.openai_text.WORDS`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from gateway.conftest import Served, _start
from prometheus_client import CollectorRegistry

from forgeline_gateway.app import default_backends
from forgeline_kit.grpc.server import GrpcService
from forgeline_registry.__main__ import build
from forgeline_registry.settings import RegistrySettings

FAKE_BASE = "org/fake-base"
#: How long a test waits for a run to finish.
RUN_DEADLINE_S = 120.0


class ThreadRegistry:
    """A registry on a real gRPC socket, served from an event loop of its own in a thread (so
    tests can use the blocking SDK while it serves)."""

    def __init__(self, root: Path) -> None:
        self.settings = RegistrySettings(
            storage="fs", fs_root=root, grpc_port=0, metrics_port=0, janitor_interval_seconds=3600
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._service: GrpcService | None = None

    def start(self) -> ThreadRegistry:
        self._thread.start()
        self._service = self._call(self._open())
        return self

    async def _open(self) -> GrpcService:
        service = GrpcService(
            self.settings, await build(self.settings), collectors=CollectorRegistry()
        )
        await service.start()
        return service

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    @property
    def target(self) -> str:
        assert self._service is not None
        return f"127.0.0.1:{self._service.grpc_port}"

    def stop(self) -> None:
        if self._service is not None:
            self._call(self._service.stop(grace=0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


@dataclass
class EvalsStack:
    """A gateway with "tiny" (llama-server) and "fake" (vLLM fake) deployed."""

    served: Served
    fake: FakeVllm
    fake_server: FakeServer
    registry: ThreadRegistry
    database: Path

    def client(self, **options: Any) -> openai.OpenAI:
        return self.served.client(self.served.admin_key, **options)


@pytest.fixture(scope="module")
def registry_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadRegistry]:
    registry = ThreadRegistry(tmp_path_factory.mktemp("registry")).start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def fake_vllm() -> Iterator[tuple[FakeVllm, FakeServer]]:
    fake = FakeVllm(FAKE_BASE)
    server = FakeServer(fake.app).start()
    yield fake, server
    server.stop()


def gateway_settings(registry: ThreadRegistry, fake_server: FakeServer) -> dict[str, Any]:
    return {
        "registry_target": registry.target,
        "registry_local_files": True,
        "vllm_urls": [fake_server.url],
        "key_cache_seconds": 0,
    }


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gguf: Path,
    registry_thread: ThreadRegistry,
    fake_vllm: tuple[FakeVllm, FakeServer],
) -> Iterator[EvalsStack]:
    fake, server = fake_vllm
    database = tmp_path_factory.mktemp("evals") / "gateway.sqlite3"
    started: list[Any] = []
    settings = gateway_settings(registry_thread, server) | {"model_dirs": [tiny_gguf.parent]}
    served = _start(database, settings, default_backends, started)
    try:
        served.deploy(
            {"name": "tiny", "backend": "llamacpp", "gguf": str(tiny_gguf), "parallel": 4}
        )
        served.deploy({"name": "fake", "backend": "vllm", "base_model": FAKE_BASE})
        yield EvalsStack(served, fake, server, registry_thread, database)
    finally:
        for gateway in started:
            gateway.stop()


def wait_for_run(client: openai.OpenAI, eval_id: str, run_id: str, *statuses: str) -> Any:
    """The run once its status is one of `statuses` (by default: any final one)."""
    wanted = statuses or ("completed", "failed", "canceled")
    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in wanted:
            return run
        assert time.monotonic() < deadline, f"run still {run.status}: {run}"
        time.sleep(0.1)


def jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
