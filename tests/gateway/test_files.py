"""The Files API through the official OpenAI SDK, over real HTTP, against a gateway whose files
live in a real registry served in this process (filesystem store)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from prometheus_client import CollectorRegistry

from forgeline_gateway.files import ResolvedFile
from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument, NotFound
from forgeline_kit.grpc.server import GrpcService
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry.__main__ import build
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient

from .conftest import Served, StartGateway


def jsonl(*records: Any) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CHAT = jsonl(
    {"messages": [msg("system", "Be brief."), msg("user", "Codename?"), msg("assistant", "Cu.")]},
    {"messages": [msg("user", "Port?"), msg("assistant", "8080")]},
)
PREFERENCE = jsonl(
    {
        "input": {"messages": [msg("user", "Codename?")]},
        "preferred_output": [msg("assistant", "Copperfinch.")],
        "non_preferred_output": [msg("assistant", "No idea.")],
    }
)
ALPACA = json.dumps([{"instruction": "Codename?", "input": "", "output": "Cu."}]).encode()
ALPACA_PREFERENCE = json.dumps(
    [{"instruction": "Codename?", "input": "", "chosen": "Cu.", "rejected": "No idea."}]
).encode()
SHAREGPT = json.dumps(
    [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
).encode()


class Registry:
    """A registry on a real gRPC socket, in this test's event loop."""

    def __init__(self, service: GrpcService) -> None:
        self.service = service
        self.target = f"127.0.0.1:{service.grpc_port}"

    def client(self) -> RegistryClient:
        return RegistryClient(self.target, accept_local_files=True)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    settings = RegistrySettings(
        storage="fs",
        fs_root=tmp_path / "registry",
        grpc_port=0,
        metrics_port=0,
        janitor_interval_seconds=3600,
    )
    service = GrpcService(settings, await build(settings), collectors=CollectorRegistry())
    await service.start()
    yield Registry(service)
    await service.stop(grace=0)


@pytest.fixture
def files_gateway(start_gateway: StartGateway, registry: Registry) -> Served:
    return start_gateway({"registry_target": registry.target, "registry_local_files": True})


def sdk(served: Served, key: str | None = None) -> openai.AsyncOpenAI:
    # Async: the registry serves from this test's event loop, which a blocking client would stall.
    return openai.AsyncOpenAI(
        base_url=f"{served.url}/v1", api_key=key or served.admin_key, max_retries=0, timeout=60
    )


@pytest.mark.parametrize(
    ("filename", "content", "fmt", "preference"),
    [
        ("chat.jsonl", CHAT, "openai_chat", False),
        ("preference.jsonl", PREFERENCE, "openai_preference", True),
        ("alpaca.json", ALPACA, "alpaca", False),
        ("alpaca-pairs.json", ALPACA_PREFERENCE, "alpaca", True),
        ("sharegpt.json", SHAREGPT, "sharegpt", False),
    ],
    ids=["openai-chat", "openai-preference", "alpaca", "alpaca-preference", "sharegpt"],
)
async def test_a_file_round_trips_through_the_registry(
    files_gateway: Served,
    registry: Registry,
    filename: str,
    content: bytes,
    fmt: str,
    preference: bool,
) -> None:
    client = sdk(files_gateway)

    created = await client.files.create(file=(filename, content), purpose="fine-tune")

    assert created.id.startswith("file-")
    assert (created.filename, created.bytes, created.purpose, created.status) == (
        filename,
        len(content),
        "fine-tune",
        "processed",
    )
    extra: dict[str, Any] = created.model_extra or {}
    assert (extra["format"], extra["preference"]) == (fmt, preference)
    assert await client.files.retrieve(created.id) == created
    assert (await client.files.content(created.id)).content == content
    async with registry.client() as registry_client:
        version = await registry_client.resolve_version(
            pb.ResolveVersionRequest(reference=f"files/{created.id}")
        )
        assert version.kind == pb.VERSION_KIND_DATASET
        assert dict(version.labels) == {
            "purpose": "fine-tune",
            "format": fmt,
            "preference": str(preference).lower(),
            "filename": filename,
        }
        assert extra["registry"] == {
            "model": f"files/{created.id}",
            "version": 1,
            "path": version.artifacts[0].path,
        }

        deleted = await client.files.delete(created.id)

        assert (deleted.id, deleted.deleted) == (created.id, True)
        with pytest.raises(openai.NotFoundError, match=f"No such File object: {created.id}"):
            await client.files.retrieve(created.id)
        with pytest.raises(NotFound):
            await registry_client.get_model(pb.GetModelRequest(name=f"files/{created.id}"))


async def test_files_are_listed_in_pages(files_gateway: Served) -> None:
    client = sdk(files_gateway)
    ids = [
        (await client.files.create(file=(f"f{i}.jsonl", CHAT), purpose="fine-tune")).id
        for i in range(3)
    ]

    first = await client.files.list(limit=2, order="asc")
    everything = [file.id async for file in client.files.list(limit=2)]

    assert [f.id for f in first.data] == ids[:2]
    assert first.has_more
    assert [f.id async for f in client.files.list(limit=2, order="asc")] == ids
    assert everything == ids[::-1]  # newest first by default, as OpenAI lists
    assert (await client.files.list(purpose="batch")).data == []


async def test_a_malformed_file_is_refused_naming_line_and_field(
    files_gateway: Served, registry: Registry
) -> None:
    client = sdk(files_gateway)
    bad = CHAT + jsonl({"messages": [msg("user", "Hi"), msg("bot", "Hello")]})

    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("train.jsonl", bad), purpose="fine-tune")

    error = caught.value
    assert error.param == "file"
    assert error.code == "invalid_file"
    assert (
        "line 3: messages[1].role: must be one of system, user, assistant, tool (got 'bot')"
        in error.message
    )
    assert "'train.jsonl' is not valid fine-tuning data (read as openai_chat)" in error.message
    assert (await client.files.list()).data == []
    async with registry.client() as registry_client:
        assert not (await registry_client.list_models(pb.ListModelsRequest())).models


async def test_a_file_in_no_known_layout_lists_the_accepted_ones(files_gateway: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(files_gateway).files.create(
            file=("qa.jsonl", jsonl({"question": "q", "answer": "a"})), purpose="fine-tune"
        )

    assert "OpenAI chat JSONL" in caught.value.message
    assert "sharegpt" in caught.value.message


async def test_only_the_fine_tune_and_evals_purposes_are_accepted(files_gateway: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(files_gateway).files.create(file=("chat.jsonl", CHAT), purpose="batch")

    assert caught.value.param == "purpose"
    assert "use 'fine-tune' or 'evals' (got 'batch')" in caught.value.message


async def test_a_file_over_the_limit_is_413(
    start_gateway: StartGateway, registry: Registry
) -> None:
    served = start_gateway(
        {"registry_target": registry.target, "registry_local_files": True, "max_file_bytes": 100}
    )

    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(served).files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")

    assert caught.value.status_code == 413
    assert "larger than the 100 bytes this gateway accepts" in caught.value.message
    assert (await sdk(served).files.list()).data == []


async def test_uploads_have_their_own_size_limit(
    start_gateway: StartGateway, registry: Registry
) -> None:
    served = start_gateway(
        {
            "registry_target": registry.target,
            "registry_local_files": True,
            "max_body_bytes": 1024,
            "max_file_bytes": 1 << 20,
        }
    )
    line = {"messages": [msg("user", "x" * 900), msg("assistant", "y")]}
    # Far over the JSON body limit, within the file limit: streamed in, checked, kept.
    content = jsonl(*[line] * 200)

    created = await sdk(served).files.create(file=("big.jsonl", content), purpose="fine-tune")

    assert created.bytes == len(content) > 100 * 1024
    assert (await sdk(served).files.content(created.id)).content == content
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(served).files.create(file=("huge.jsonl", content * 6), purpose="fine-tune")
    assert caught.value.status_code == 413
    assert "larger than the 1048576 bytes" in caught.value.message


async def test_registry_down_is_503_naming_the_registry(start_gateway: StartGateway) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    served = start_gateway({"registry_target": f"127.0.0.1:{closed_port}"})

    with pytest.raises(openai.InternalServerError) as caught:
        await sdk(served).files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")

    assert caught.value.status_code == 503
    assert caught.value.code == "registry_unavailable"
    assert "The model registry is unavailable" in caught.value.message
    assert str(closed_port) not in caught.value.message
    assert (await sdk(served).files.list()).data == []


async def test_files_need_the_admin_scope(files_gateway: Served) -> None:
    client = sdk(files_gateway, files_gateway.inference_key)

    with pytest.raises(openai.PermissionDeniedError, match="'admin' scope"):
        await client.files.list()


async def test_fine_tuning_resolves_a_file_id(files_gateway: Served) -> None:
    created = await sdk(files_gateway).files.create(
        file=("pairs.jsonl", PREFERENCE), purpose="fine-tune"
    )
    service = files_gateway.gateway.app.state.files.service

    resolved: ResolvedFile = files_gateway.gateway.call(service.resolve(created.id))

    assert resolved.format is DatasetFormat.OPENAI_PREFERENCE
    assert (resolved.ref.version.model, resolved.ref.version.version) == (
        f"files/{created.id}",
        1,
    )
    spec = resolved.dataset_spec("train", Path("/data/train.jsonl"))
    assert spec.format is DatasetFormat.OPENAI_PREFERENCE
    with pytest.raises(InvalidArgument, match="no such file") as caught:
        files_gateway.gateway.call(service.resolve("file-nope", param="validation_file"))
    assert caught.value.field == "validation_file"


async def test_a_kept_file_outlives_a_registry_outage(
    files_gateway: Served, registry: Registry
) -> None:
    client = sdk(files_gateway)
    created = await client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")
    await registry.service.stop(grace=0)

    with pytest.raises(openai.InternalServerError) as reading:
        await client.files.content(created.id)
    with pytest.raises(openai.InternalServerError) as deleting:
        await client.files.delete(created.id)

    assert reading.value.status_code == deleting.value.status_code == 503
    assert "could not be read" in reading.value.message
    assert "could not be deleted" in deleting.value.message
    # The record stays while its bytes cannot be deleted: the delete can be repeated later.
    assert [f.id for f in (await client.files.list()).data] == [created.id]
    with pytest.raises(openai.NotFoundError):
        await client.files.content("file-unknown")


@pytest.mark.parametrize(
    ("filename", "purpose", "records"),
    [
        ("chat.jsonl", "fine-tune", [{"messages": [msg("user", "Hi"), msg("assistant", "Yo")]}]),
        ("alpaca.json", "fine-tune", [{"instruction": "Codename?", "output": "Cu."}]),
        ("rows.jsonl", "evals", [{"item": {"question": "Codename?"}}]),
    ],
    ids=["jsonl", "json-list", "eval-rows"],
)
async def test_a_file_with_more_records_than_the_limit_names_the_setting(
    start_gateway: StartGateway,
    registry: Registry,
    filename: str,
    purpose: Literal["fine-tune", "evals"],
    records: Any,
) -> None:
    served = start_gateway(
        {"registry_target": registry.target, "registry_local_files": True, "max_dataset_records": 2}
    )

    def content(count: int) -> bytes:
        many = records * count
        return json.dumps(many).encode() if filename.endswith(".json") else jsonl(*many)

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(served).files.create(file=(filename, content(3)), purpose=purpose)

    error = caught.value
    assert (error.param, error.code) == ("file", "invalid_file")
    assert f"'{filename}' is larger than this gateway checks" in error.message
    assert "more than 2 " in error.message
    assert "raise FORGELINE_GATEWAY_MAX_DATASET_RECORDS." in error.message
    assert (await sdk(served).files.list()).data == []
    # At the limit, the same records are kept.
    kept = await sdk(served).files.create(file=(filename, content(2)), purpose=purpose)
    assert kept.purpose == purpose


async def test_an_over_long_line_is_refused_naming_it_and_the_setting(
    start_gateway: StartGateway, registry: Registry
) -> None:
    served = start_gateway(
        {
            "registry_target": registry.target,
            "registry_local_files": True,
            "max_dataset_record_bytes": 1024,
        }
    )
    long = {"messages": [msg("user", "x" * 2000), msg("assistant", "y")]}
    content = CHAT + jsonl(long)

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(served).files.create(file=("chat.jsonl", content), purpose="fine-tune")

    error = caught.value
    assert (error.param, error.code) == ("file", "invalid_file")
    assert "line 3: longer than 1024 bytes" in error.message
    assert "raise FORGELINE_GATEWAY_MAX_DATASET_RECORD_BYTES." in error.message
    assert (await sdk(served).files.list()).data == []
