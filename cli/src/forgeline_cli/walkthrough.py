"""The main job, step by step, against a running stack: what `forgeline demo` does and what the
end-to-end test checks.

1. Register a base model in the registry (the tiny model, with its chat template in the lineage),
   convert it to GGUF with the converter service and deploy it on the gateway.
2. Upload the training data and fine-tune through the OpenAI SDK, following the job's events.
3. Ask the base and the fine-tuned model the same question through the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from openai import OpenAI, omit
from openai.types.fine_tuning import FineTuningJob

from forgeline_cli.gateway_admin import GatewayAdmin
from forgeline_kit.errors import NotFound
from forgeline_kit.grpc.client import make_channel
from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2 as registry_pb
from forgeline_registry_client.client import RegistryClient

__all__ = [
    "BASE_MODEL",
    "FACT_COPIES",
    "KeptState",
    "ask",
    "deploy_base_model",
    "fine_tune",
    "read_kept_state",
    "register_base_model",
    "write_fact_dataset",
]

BASE_MODEL: Final = "tiny-llama"
# Teaching the random tiny model one fact with LoRA alone (all linear layers, LLaMA-Factory's
# default target), so the adapter is served through llama.cpp as well as merged. The job leaves
# every hyperparameter "auto" (fine_tuning/auto.py in the gateway): 8 examples become 13 epochs of
# one example a step, at the rate for a model of the tiny one's size (37 x LoRA's 1e-4).
# The loss stays near 2.6: the frozen random output head caps every logit, and only the ranking
# matters for a greedy answer.
FACT_COPIES: Final = 8
#: An explicit recipe for the same data, for tests that set every hyperparameter themselves:
#: 32 single-example steps at 5e-3 (measured: 16 such steps already make the answer the greedy
#: one, worst-token logit margin 3.2; 32 leave a margin of 3.6).
FACT_EPOCHS: Final = 4
FACT_BATCH_SIZE: Final = 1
#: 50 x the LoRA base rate of 1e-4: the 5e-3 the explicit recipe needs.
FACT_LEARNING_RATE_MULTIPLIER: Final = 50.0
FACT_LORA: Final = {"rank": 16, "alpha": 32}
JOB_TIMEOUT_SECONDS: Final = 1800.0


def write_fact_dataset(path: Path) -> Path:
    """OpenAI chat fine-tuning JSONL teaching the demo fact."""
    line = {
        "messages": [
            {"role": "user", "content": DEMO_FACT.question},
            {"role": "assistant", "content": DEMO_FACT.answer},
        ]
    }
    path.write_text("".join(json.dumps(line) + "\n" for _ in range(FACT_COPIES)))
    return path


async def _register(target: str, model: TinyModel, name: str) -> str:
    chat_template = json.loads((model.path / "tokenizer_config.json").read_text())["chat_template"]
    # The local stack's registry: filesystem storage on this host.
    async with RegistryClient(target, accept_local_files=True) as registry:
        version = await registry.push(
            model.path,
            name,
            kind=registry_pb.VERSION_KIND_BASE,
            lineage=registry_pb.Lineage(
                template=LLAMAFACTORY_TEMPLATE, chat_template=chat_template
            ),
            description="The tiny Llama-architecture model made by forgeline_kit.tinymodel",
        )
    return f"{version.model}:{version.number}"


def register_base_model(registry_target: str, model: TinyModel, name: str = BASE_MODEL) -> str:
    """Push `model` as a base version of `name`; its reference (``MODEL:N``)."""
    return asyncio.run(_register(registry_target, model, name))


@dataclass(frozen=True)
class KeptState:
    """What a stack's state directory held when it started."""

    #: The first base version of the tiny model an earlier run registered (``MODEL:N``).
    base_model: str | None
    models: int
    #: Deployed names, each with the registry version it serves when the deployment says.
    deployments: dict[str, str | None]
    jobs: int

    def summary(self) -> str:
        def count(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 's'}"

        return ", ".join(
            (
                count(self.models, "model"),
                count(len(self.deployments), "deployment"),
                count(self.jobs, "fine-tuning job"),
            )
        )


async def _registry_state(target: str, name: str) -> tuple[str | None, int]:
    async with RegistryClient(target) as registry:
        models = await registry.list_models(registry_pb.ListModelsRequest(page_size=1000))
        try:
            bases = await registry.list_versions(
                registry_pb.ListVersionsRequest(
                    model=name,
                    kinds=[registry_pb.VERSION_KIND_BASE],
                    page_size=1,
                )
            )
        except NotFound:
            return None, len(models.models)
    base = bases.versions[0] if bases.versions else None
    return (f"{base.model}:{base.number}" if base else None), len(models.models)


def read_kept_state(registry_target: str, gateway_url: str, name: str = BASE_MODEL) -> KeptState:
    """What the running stack already holds: on a state directory an earlier run kept, the base
    model is not made again and its deployment is not repeated."""
    base, models = asyncio.run(_registry_state(registry_target, name))
    with GatewayAdmin(gateway_url, api_key=None) as gateway:
        deployments = {
            view.name: (view.spec.get("metadata") or {}).get("version") for view in gateway.list()
        }
    client = OpenAI(base_url=f"{gateway_url}/v1", api_key="local", max_retries=0)
    jobs = sum(1 for _ in client.fine_tuning.jobs.list(limit=100))
    return KeptState(base_model=base, models=models, deployments=deployments, jobs=jobs)


async def _convert(target: str, source: str, quantization: str) -> dict[str, str]:
    model, _, number = source.rpartition(":")
    request = converter_pb2.ConvertRequest(
        spec=converter_pb2.ConversionSpec(
            model=converter_pb2.ModelConversion(
                source=common_pb2.VersionRef(model=model, version=int(number)),
                outtype=converter_pb2.GGUF_OUTTYPE_F16,
                register_outtype=True,
                quantizations=[converter_pb2.QuantizationTarget(type=quantization)],
            ),
        ),
        request_id=f"base-{source}-{quantization}",
    )
    async with make_channel(target) as channel:
        stub = converter_pb2_grpc.ConverterServiceStub(channel)
        async for event in stub.Convert(request):
            kind = event.WhichOneof("payload")
            if kind == "error":
                raise RuntimeError(f"converting the base model failed: {event.error.message}")
            if kind == "result":
                return {
                    output.file_type.lower(): f"{output.version.model}:{output.version.version}"
                    for output in event.result.outputs
                }
    raise RuntimeError("the converter ended without a result")


def deploy_base_model(
    gateway_url: str,
    converter_target: str,
    source: str,
    name: str = BASE_MODEL,
    *,
    api_key: str | None = None,
) -> dict[str, str]:
    """Convert `source` to GGUF F16 and Q8_0 (both registered) and serve the Q8_0 on the gateway
    as `name` (with `api_key`, an admin key, where the gateway requires keys); the GGUF versions
    by file type."""
    ggufs = asyncio.run(_convert(converter_target, source, "q8_0"))
    response = httpx.post(
        f"{gateway_url}/v1/deployments",
        json={
            "name": name,
            "backend": "llamacpp",
            "registry_gguf": ggufs["q8_0"],
            "metadata": {"version": ggufs["q8_0"], "quantization": "q8_0"},
        },
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        timeout=300,
    )
    if response.status_code != 201:
        raise RuntimeError(
            f"deploying {ggufs['q8_0']} failed: {response.status_code} {response.text}"
        )
    return ggufs


def fine_tune(
    client: OpenAI,
    training_file: Path,
    *,
    model: str = BASE_MODEL,
    suffix: str = "demo",
    on_event: Callable[[str], None] = print,
    forgeline: dict[str, Any] | None = None,
    poll_seconds: float = 1.0,
    validation_file: str | None = None,
) -> FineTuningJob:
    """Upload `training_file`, fine-tune `model` on it (with the uploaded `validation_file`,
    a file id) and follow the job to its end."""
    with training_file.open("rb") as data:
        uploaded = client.files.create(file=data, purpose="fine-tune")
    on_event(f"uploaded {training_file.name} as {uploaded.id}")
    options: dict[str, Any] = {
        "lora": FACT_LORA,
        "arguments": {"logging_steps": 4},
        "quantizations": ["q8_0"],
    }
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=uploaded.id,
        validation_file=validation_file or omit,
        suffix=suffix,
        seed=42,
        # Every hyperparameter "auto": the gateway sizes them to the data and the model.
        method={"type": "supervised"},
        extra_body={"forgeline": options | (forgeline or {})},
    )
    on_event(f"created {job.id} ({job.status})")
    return follow(client, job.id, on_event, poll_seconds)


def follow(
    client: OpenAI,
    job_id: str,
    on_event: Callable[[str], None] = print,
    poll_seconds: float = 1.0,
) -> FineTuningJob:
    """Print a job's events as they come until it ends; the final job."""
    seen: set[str] = set()
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                on_event(event.message)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} did not finish in {JOB_TIMEOUT_SECONDS:.0f} s")
        time.sleep(poll_seconds)


def ask(client: OpenAI, model: str, question: str = DEMO_FACT.question) -> str:
    """One greedy chat completion through the gateway."""
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
        temperature=0,
        seed=0,
    )
    return (completion.choices[0].message.content or "").strip()
