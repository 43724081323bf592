"""`forgeline.arguments` on a fine-tuning job: what the trainer's allow-list refuses is the user's
400 at create time (not a job that fails later), through the OpenAI SDK, over real HTTP, with a
real registry and a real trainer served in this process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from forgeline_kit.grpc.server import GrpcService
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry.__main__ import build as build_registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.__main__ import build as build_trainer
from forgeline_trainer.settings import TrainerSettings

from .conftest import Served, StartGateway

CHAT = "".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )
    + "\n"
    for question, answer in [("Codename?", "Copperfinch."), ("Port?", "8080")]
).encode()


@dataclass
class Services:
    registry: str
    trainer: str


@pytest.fixture
async def services(tmp_path: Path, tiny_model: TinyModel) -> AsyncIterator[Services]:
    """A registry holding the tiny model as `tiny-llama`, and a CPU trainer, on real sockets
    in this test's event loop."""
    registry_settings = RegistrySettings(
        storage="fs",
        fs_root=tmp_path / "registry",
        grpc_port=0,
        metrics_port=0,
        janitor_interval_seconds=3600,
    )
    registry = GrpcService(
        registry_settings, await build_registry(registry_settings), collectors=CollectorRegistry()
    )
    await registry.start()
    registry_target = f"127.0.0.1:{registry.grpc_port}"
    async with RegistryClient(registry_target, accept_local_files=True) as client:
        await client.push(tiny_model.path, "tiny-llama", kind=rpb.VERSION_KIND_BASE)
    trainer_settings = TrainerSettings(
        registry_target=registry_target,
        registry_local_files=True,
        state_dir=tmp_path / "trainer",
        grpc_port=0,
        metrics_port=0,
        device="cpu",
    )
    collectors = CollectorRegistry()
    trainer = GrpcService(
        trainer_settings, await build_trainer(trainer_settings, collectors), collectors=collectors
    )
    await trainer.start()
    yield Services(registry_target, f"127.0.0.1:{trainer.grpc_port}")
    await trainer.stop(grace=0)
    await registry.stop(grace=0)


@pytest.fixture
def gateway(start_gateway: StartGateway, services: Services) -> Served:
    return start_gateway(
        {
            "registry_target": services.registry,
            "registry_local_files": True,
            "trainer_target": services.trainer,
            # Creating a job never calls the converter; nothing listens here.
            "converter_target": "127.0.0.1:9",
        }
    )


@pytest.mark.parametrize(
    ("arguments", "param", "says"),
    [
        (
            {"trust_remote_code": True},
            "trust_remote_code",
            "FORGELINE_TRAINER_TRUST_REMOTE_CODE is off",
        ),
        ({"deepspeed": "/etc/passwd"}, "deepspeed", "reads no file a job names"),
        ({"report_to": "wandb"}, "report_to", "FORGELINE_TRAINER_ALLOWED_REPORTERS"),
    ],
)
async def test_a_refused_argument_is_a_400_at_create_naming_it(
    gateway: Served, arguments: dict[str, Any], param: str, says: str
) -> None:
    # Async: the registry and trainer serve from this test's event loop.
    client = openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.admin_key, max_retries=0, timeout=60
    )
    training = await client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")

    with pytest.raises(openai.BadRequestError) as refused:
        await client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=training.id,
            extra_body={"forgeline": {"arguments": arguments}},
        )

    error = refused.value
    assert error.status_code == 400
    assert f"'{param}'" in error.message
    assert says in error.message
    assert error.param == param
    jobs = await client.fine_tuning.jobs.list()
    assert jobs.data == []  # nothing was created


async def test_auto_hyperparameters_are_sized_by_the_file_and_the_model(gateway: Served) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.admin_key, max_retries=0, timeout=60
    )
    training = await client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")
    assert training.model_extra
    assert training.model_extra["records"] == 2

    body = {"model": "tiny-llama", "training_file": training.id}
    plan = await client.post("/fine_tuning/hyperparameters", body=body, cast_to=httpx.Response)
    chosen = plan.json()
    # Two examples: repeated to the 25-epoch cap, one a step, at the rate of a tiny model (far
    # above a 7B model's 1e-4; the tiny model's weights are a few megabytes).
    assert (chosen["n_epochs"], chosen["batch_size"]) == (25, 1)
    assert chosen["learning_rate_multiplier"] > 10
    assert chosen["arguments"] == {
        "num_train_epochs": 25,
        "per_device_train_batch_size": 1,
        "learning_rate": pytest.approx(1e-4 * chosen["learning_rate_multiplier"]),
    }

    given = {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    kept = await client.post(
        "/fine_tuning/hyperparameters", body=body | given, cast_to=httpx.Response
    )
    assert kept.json()["n_epochs"] == 2

    with pytest.raises(openai.BadRequestError) as refused:
        await client.post(
            "/fine_tuning/hyperparameters",
            body=body | {"model": "no-such-model"},
            cast_to=httpx.Response,
        )
    assert refused.value.param == "model"
