"""A fine-tuning job whose base model is a hub id: the gateway (``FORGELINE_GATEWAY_HUB_IMPORTS``
on) imports ``hf:ORG/NAME`` into the registry with the real ``huggingface_hub`` client, from the
Hub stand-in of tests/fakes/hf_hub.py that ``HF_ENDPOINT`` points at, then trains, converts and
serves it like any registered base model. A stack of its own: the package's shared one has hub
imports off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes.hf_hub import FakeHfHub
from fakes.hub_files import Repo
from fakes.server import FakeServer
from openai import OpenAI

from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import (
    FACT_LEARNING_RATE_MULTIPLIER,
    FACT_LORA,
    follow,
    write_fact_dataset,
)
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

REPO_ID = "acme/tiny-chat"


@dataclass
class HubStack:
    stack: LocalStack
    hub: FakeHfHub
    repo: Repo
    client: OpenAI
    work: Path


@pytest.fixture(scope="module")
def hub_stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
) -> Iterator[HubStack]:
    work = tmp_path_factory.mktemp("hub-pipeline")
    hub = FakeHfHub()
    server = FakeServer(hub.app).start()
    repo = hub.add_repo(REPO_ID, tiny_model.path)
    stack = LocalStack(
        work / "stack",
        extra_env={
            "FORGELINE_GATEWAY_HUB_IMPORTS": "true",
            "HF_ENDPOINT": server.url,
            "NO_PROXY": "127.0.0.1,localhost",
        },
    )
    try:
        stack.start()
        client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="test", max_retries=0)
        yield HubStack(stack, hub, repo, client, work)
    finally:
        stack.stop()
        server.stop()


def _base_version(stack: LocalStack) -> pb.Version:
    async def read() -> pb.Version:
        async with RegistryClient(stack.registry_target) as registry:
            return await registry.get_version(pb.GetVersionRequest(model=REPO_ID, version=1))

    return asyncio.run(read())


def test_a_job_on_a_hub_id_imports_the_base_model_then_trains_it(hub_stack: HubStack) -> None:
    client = hub_stack.client
    with write_fact_dataset(hub_stack.work / "fact.jsonl").open("rb") as data:
        uploaded = client.files.create(file=data, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=f"hf:{REPO_ID}",
        training_file=uploaded.id,
        suffix="hub",
        seed=42,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 1,
                    "batch_size": 1,
                    "learning_rate_multiplier": FACT_LEARNING_RATE_MULTIPLIER,
                }
            },
        },
        extra_body={"forgeline": {"lora": FACT_LORA, "quantizations": ["q8_0"]}},
    )
    # The import happened while the job was created: the base is pinned like any other.
    base = _base_version(hub_stack.stack)
    provenance = base.lineage.provenance
    assert (provenance.hub, provenance.repo_id, provenance.commit) == (
        "huggingface",
        REPO_ID,
        hub_stack.repo.commit,
    )
    assert {a.path: a.sha256 for a in base.artifacts} == {
        path: file.sha256 for path, file in hub_stack.repo.files.items()
    }
    assert job.model == f"hf:{REPO_ID}"

    finished = follow(client, job.id, on_event=lambda _: None)
    assert finished.status == "succeeded", finished.error
    assert finished.fine_tuned_model is not None
    assert finished.fine_tuned_model.startswith(f"ft:{REPO_ID}:forgeline:hub:")
    served = {m.id for m in client.models.list().data}
    assert finished.fine_tuned_model in served
