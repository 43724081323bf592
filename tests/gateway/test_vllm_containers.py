"""A registry HF version deployed on a vLLM container the gateway starts through the Docker API,
against the Docker Engine contract fake (whose containers run the vLLM contract fake): deploy,
chat through the gateway with the openai SDK, re-attach after a gateway restart, undeploy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.docker_engine import FakeDockerEngine
from fakes.server import FakeServer
from openai.types.chat import ChatCompletionMessageParam

from forgeline_cli.stack import LocalStack
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

from .conftest import Served, StartGateway

IMAGE = "vllm/vllm-openai:v0.11.0"
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def registered(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel
) -> Iterator[tuple[str, str]]:
    """A registry process holding the tiny model as a base version: its address and the
    version's reference."""
    stack = LocalStack(tmp_path_factory.mktemp("registry"))
    stack.start("registry")
    try:

        async def push() -> str:
            async with RegistryClient(stack.registry_target, accept_local_files=True) as client:
                version = await client.push(
                    tiny_model.path, "acme/tiny-llama", kind=rpb.VERSION_KIND_BASE
                )
            return f"{version.model}:{version.number}"

        yield stack.registry_target, asyncio.run(push())
    finally:
        stack.stop("registry")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDockerEngine]:
    """The Docker Engine fake with the vLLM image, as the gateway's DOCKER_HOST."""
    fake = FakeDockerEngine(images={IMAGE})
    server = FakeServer(fake.app).start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.port}")
    for variable in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(variable, raising=False)
    yield fake
    fake.close()
    server.stop()


def _settings(registry: str, cache: Path, **extra: Any) -> dict[str, Any]:
    return {
        "registry_target": registry,
        "registry_local_files": True,
        "model_cache": cache,
        "vllm_image": IMAGE,
        "vllm_start_seconds": 30,
        **extra,
    }


def _spec(reference: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tiny-vllm",
        "backend": "vllm",
        "registry_model": reference,
        "metadata": {"version": reference},
        **extra,
    }


def test_deploy_chat_restart_and_undeploy(
    start_gateway: StartGateway,
    registered: tuple[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    registry, reference = registered
    database = tmp_path / "gateway.sqlite3"
    cache = tmp_path / "models"
    served = start_gateway(_settings(registry, cache), database=database)

    created = served.deploy(_spec(reference, tensor_parallel_size=2))

    assert created["status"] == "ready"
    assert created["instances"] == 1
    # The container was asked for the GPUs, the model mounted read-only, served under the name.
    [request] = engine.creates
    host_config = request["HostConfig"]
    [gpus] = host_config["DeviceRequests"]
    assert gpus["Capabilities"] == [["gpu"]]
    assert gpus["Count"] == 2
    [mount] = host_config["Mounts"]
    assert mount == {
        "Target": "/models",
        "Source": str(cache.resolve()),
        "Type": "bind",
        "ReadOnly": True,
    }
    command = request["Image"], request["Cmd"]
    assert command[0] == IMAGE
    arguments = dict(zip(command[1][::2], command[1][1::2], strict=True))
    assert arguments["--served-model-name"] == "tiny-vllm"
    assert arguments["--tensor-parallel-size"] == "2"
    model_dir = arguments["--model"].removeprefix("/models/")
    assert (cache / model_dir / "config.json").is_file()  # the version, pulled into the cache
    assert host_config["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    [container] = engine.containers.values()
    assert container.status == "running"
    assert container.health_polls > engine.unhealthy_polls  # routed only once healthy

    answer = served.client().chat.completions.create(model="tiny-vllm", messages=CHAT)
    assert answer.choices[0].message.content
    assert container.vllm is not None
    assert container.vllm.requests[-1]["model"] == "tiny-vllm"

    # A restarted gateway re-attaches to the running container instead of starting another.
    served.gateway.stop()
    again = start_gateway(_settings(registry, cache), database=database)
    assert [d["status"] for d in again.admin("GET", "/v1/deployments").json()["data"]] == ["ready"]
    assert len(engine.creates) == 1
    assert list(engine.containers.values()) == [container]
    answer = again.client().chat.completions.create(model="tiny-vllm", messages=CHAT)
    assert answer.choices[0].message.content

    assert again.admin("DELETE", "/v1/deployments/tiny-vllm").status_code == 204
    assert engine.containers == {}  # stopped and removed
    assert container.stops == 1
    assert again.client().models.list().data == []


def test_a_restart_with_another_image_replaces_the_container(
    start_gateway: StartGateway,
    registered: tuple[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    registry, reference = registered
    database = tmp_path / "gateway.sqlite3"
    served = start_gateway(_settings(registry, tmp_path / "models"), database=database)
    served.deploy(_spec(reference))
    [old] = engine.containers.values()
    served.gateway.stop()
    newer = "vllm/vllm-openai:v0.11.1"
    engine.images.add(newer)

    again = start_gateway(
        _settings(registry, tmp_path / "models", vllm_image=newer), database=database
    )

    [current] = engine.containers.values()
    assert current is not old
    assert current.body["Image"] == newer
    assert old.stops == 1
    answer = again.client().chat.completions.create(model="tiny-vllm", messages=CHAT)
    assert answer.choices[0].message.content


def test_a_missing_image_names_the_pull_to_run(
    start_gateway: StartGateway,
    registered: tuple[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    registry, reference = registered
    engine.images.clear()
    served = start_gateway(_settings(registry, tmp_path / "models"))

    response = served.admin("POST", "/v1/deployments", json=_spec(reference))

    assert response.status_code == 400, response.text
    assert f"docker pull {IMAGE}" in response.json()["error"]["message"]
    assert served.admin("GET", "/v1/deployments").json()["data"] == []


def test_a_container_that_exits_while_starting_is_removed(
    start_gateway: StartGateway,
    registered: tuple[str, str],
    engine: FakeDockerEngine,
    tmp_path: Path,
) -> None:
    registry, reference = registered
    engine.exit_on_start = 1
    served = start_gateway(_settings(registry, tmp_path / "models"))

    response = served.admin("POST", "/v1/deployments", json=_spec(reference))

    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "stopped while starting" in message
    assert "exit code 1" in message
    assert engine.containers == {}


def test_docker_unreachable_is_a_clear_error(
    start_gateway: StartGateway,
    registered: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    registry, reference = registered
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    served = start_gateway(_settings(registry, tmp_path / "models"))

    response = served.admin("POST", "/v1/deployments", json=_spec(reference))

    assert response.status_code == 400, response.text
    assert "DOCKER_HOST" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {"urls": ["http://127.0.0.1:1"]},
        {"base_model": "org/x"},
        {"adapter": "/adapters/x"},
        {"embeddings": True},
    ],
)
def test_registry_model_excludes_running_servers(
    start_gateway: StartGateway, extra: dict[str, Any], tmp_path: Path
) -> None:
    served: Served = start_gateway()

    response = served.admin("POST", "/v1/deployments", json=_spec("acme/tiny:1", **extra))

    assert response.status_code == 400, response.text
