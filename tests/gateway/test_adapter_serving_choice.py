"""How the pipeline's deploying stage serves a job (`deploy.serve`), without training: a real
registry holding the tiny model, its GGUF and a fine-tune's GGUF adapter and merged GGUFs (made
from random LoRA weights, `tests/gguf_adapters.py`), a real gateway serving the base GGUF, and the
pipeline's `_deploy` run on a job record that names them.

The adapter is served on the base only when its greedy answers are the merged model's; compared
with the merged GGUF of another adapter it is not, and the job is served merged with an event
saying why. The whole pipeline, with training, is in tests/pipeline/test_adapter_serving.py.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fakes.ollama import FakeOllama
from fakes.server import FakeServer
from gguf_adapters import make_gguf_adapter

from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import register_base_model
from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate
from forgeline_gateway.backends.ollama import ollama_model_name
from forgeline_gateway.fine_tuning.agreement import Messages
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.quality import ADAPTER_TOLERANCE
from forgeline_gateway.fine_tuning.records import ArtifactQuality, JobRecord, Outputs
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry.client import RegistryClient

from .conftest import Served, StartGateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS: list[Messages] = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]


@dataclass(frozen=True)
class Registered:
    target: str
    base: str  # the tiny model, HF
    base_gguf: str
    adapter: str  # the fine-tune's GGUF adapter
    merged: str  # its merged GGUF
    other_merged: str  # the merged GGUF of another adapter


@pytest.fixture(scope="module")
def registered(
    tiny_model: TinyModel,
    tiny_gguf: Path,
    llamacpp_toolchain: Toolchain,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Registered]:
    work = tmp_path_factory.mktemp("choice")
    made = make_gguf_adapter(tiny_model.path, work, llamacpp_toolchain, seed=3, merged=True)
    other = make_gguf_adapter(tiny_model.path, work, llamacpp_toolchain, seed=4, merged=True)
    assert made.merged_gguf is not None
    assert other.merged_gguf is not None
    stack = LocalStack(work / "stack")
    stack.start("registry")
    try:
        base = register_base_model(stack.registry_target, tiny_model)

        async def push(name: str, file: Path, kind: int, parent: str | None = None) -> str:
            directory = work / "push" / name
            directory.mkdir(parents=True)
            shutil.copy2(file, directory / file.name)
            lineage = rpb.Lineage()
            if parent is not None:
                model, _, number = parent.rpartition(":")
                lineage.parents.append(
                    rpb.Parent(
                        version=common_pb2.VersionRef(model=model, version=int(number)),
                        relation=rpb.RELATION_CONVERTED_FROM,
                    )
                )
            async with RegistryClient(stack.registry_target, accept_local_files=True) as client:
                version = await client.push(directory, name, kind=cast(Any, kind), lineage=lineage)
            return f"{version.model}:{version.number}"

        yield Registered(
            target=stack.registry_target,
            base=base,
            base_gguf=asyncio.run(push("tiny-llama-gguf", tiny_gguf, rpb.VERSION_KIND_GGUF, base)),
            adapter=asyncio.run(push("ft-adapter", made.gguf, rpb.VERSION_KIND_GGUF_ADAPTER)),
            merged=asyncio.run(push("ft-merged", made.merged_gguf, rpb.VERSION_KIND_GGUF)),
            other_merged=asyncio.run(
                push("other-merged", other.merged_gguf, rpb.VERSION_KIND_GGUF)
            ),
        )
    finally:
        stack.stop("registry")


#: Tokens of each answer compared. Not the pipeline's 32: a model with random weights has logits
#: so close that a long greedy continuation parts at the first rounding difference between an
#: adapter applied at run time and one merged before conversion; a trained adapter's answers are
#: decisive (the pipeline's own test compares 32 tokens).
ANSWER_TOKENS = 12


class _Check:
    """The pipeline's `AdapterCheck`: fixed prompts, greedy answers through the gateway's API
    (as `ServedAnswers` asks them through its proxy)."""

    def __init__(self, served: Served) -> None:
        self.served = served

    async def prompts(self, file_id: str, limit: int) -> list[Messages]:
        return PROMPTS[:limit]

    async def answer(self, model: str, messages: Messages) -> str:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            response = await client.post(
                f"{self.served.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {self.served.inference_key}"},
                json={
                    "model": model,
                    "messages": messages,
                    "temperature": 0,
                    "seed": 0,
                    "max_tokens": ANSWER_TOKENS,
                },
            )
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"] or "")


@dataclass
class Deploying:
    served: Served
    registered: Registered
    store: JobStore

    def run(self, job: JobRecord) -> tuple[JobRecord, list[str]]:
        """The deploying stage of `job`, to its end; the job and its events' messages."""
        self.store.put(job)

        async def deploy() -> JobRecord:
            async with RegistryClient(self.registered.target) as registry:
                pipeline = Pipeline(
                    self.store,
                    trainer=cast(Any, None),
                    converter=cast(Any, None),
                    registry=registry.stub,
                    files=cast(Any, None),
                    deployments=self.served.gateway.app.state.manager,
                    organization="forgeline",
                    adapter_check=_Check(self.served),
                )
                return await pipeline._deploy(job)

        done = self.served.gateway.call(deploy(), timeout=300)
        events = [e.message for e in self.store.events(job.id, before=None, limit=100)[0]]
        return done, events


@pytest.fixture
def deploying(
    start_gateway: StartGateway, registered: Registered, tmp_path: Path
) -> Iterator[Deploying]:
    served = start_gateway({"registry_target": registered.target, "registry_local_files": True})
    served.deploy(
        {
            "name": "tiny-llama",
            "backend": "llamacpp",
            "registry_gguf": registered.base_gguf,
            "parallel": 2,
            "metadata": {"version": registered.base_gguf, "quantization": "f16"},
        }
    )
    store = JobStore.open(tmp_path / "jobs.sqlite3")
    yield Deploying(served, registered, store)
    store.close()


def _job(registered: Registered, merged: str, serve: str = "adapter", **outputs: Any) -> JobRecord:
    request = FineTuningJobCreate.model_validate(
        {
            "model": "tiny-llama",
            "training_file": "file-1",
            "forgeline": {
                "quantizations": ["f16"],
                "deploy": {"quantization": "f16", "serve": serve},
            },
        }
    )
    return JobRecord(
        id="ftjob-0123456789abcdef01234567",
        created_at=1,
        owner="forgeline",
        request=request,
        fine_tuned_model="ft:tiny-llama:forgeline::01234567",
        seed=1,
        base_version=registered.base,
        stage="deploying",
        outputs=Outputs(
            **{
                "adapter": "ft-adapter-hf:1",
                "gguf": {"f16": merged},
                "gguf_adapter": registered.adapter,
                **outputs,
            }
        ),
    )


def _deployment(served: Served, name: str) -> dict[str, Any]:
    response = served.admin("GET", f"/v1/deployments/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_an_adapter_that_answers_as_its_merged_model_is_served_on_the_base(
    deploying: Deploying, registered: Registered
) -> None:
    job, events = deploying.run(_job(registered, registered.merged))

    assert job.stage == "succeeded"
    outputs = job.outputs
    assert (outputs.served_as, outputs.base_deployment, outputs.agreement) == (
        "adapter",
        "tiny-llama",
        "3/3",
    )
    assert outputs.deployment == job.fine_tuned_model
    deployed = _deployment(deploying.served, job.fine_tuned_model)
    assert deployed["spec"]["base"] == "tiny-llama"
    assert deployed["spec"]["registry_lora"] == [registered.adapter]
    assert _deployment(deploying.served, "tiny-llama")["adapters"] == [job.fine_tuned_model]
    # The merged model the check compared with is gone.
    names = [d["name"] for d in deploying.served.admin("GET", "/v1/deployments").json()["data"]]
    assert sorted(names) == sorted(["tiny-llama", job.fine_tuned_model])
    assert any(
        "as an adapter on the base deployment 'tiny-llama'" in e and "3 of 3 prompts" in e
        for e in events
    )


def test_an_adapter_that_answers_otherwise_falls_back_to_merged(
    deploying: Deploying, registered: Registered
) -> None:
    job, events = deploying.run(_job(registered, registered.other_merged))

    assert job.stage == "succeeded"
    assert job.outputs.served_as == "merged"
    assert job.outputs.agreement is not None
    deployed = _deployment(deploying.served, job.fine_tuned_model)
    assert deployed["spec"]["registry_gguf"] == registered.other_merged
    assert deployed["spec"]["base"] is None
    assert _deployment(deploying.served, "tiny-llama")["adapters"] == []
    [said] = [e for e in events if e.startswith(f"Serving {job.fine_tuned_model} merged")]
    assert "does not hold the merged model's quality" in said
    assert "the first difference is on prompt" in said


@pytest.mark.parametrize(
    ("serve", "outputs", "why"),
    [
        ("merged", {}, "deploy.serve is 'merged'"),
        ("adapter", {"gguf_adapter": None}, "the job made no GGUF adapter"),
    ],
)
def test_a_job_is_served_merged_when_asked_or_without_a_gguf_adapter(
    deploying: Deploying, registered: Registered, serve: str, outputs: dict[str, Any], why: str
) -> None:
    job, events = deploying.run(_job(registered, registered.merged, serve, **outputs))

    assert job.outputs.served_as == "merged"
    assert job.outputs.agreement is None
    assert _deployment(deploying.served, job.fine_tuned_model)["spec"]["registry_gguf"] == (
        registered.merged
    )
    assert any(why in e for e in events)


def test_without_a_deployment_of_the_base_the_job_is_served_merged(
    deploying: Deploying, registered: Registered
) -> None:
    assert deploying.served.admin("DELETE", "/v1/deployments/tiny-llama").status_code == 204

    job, events = deploying.run(_job(registered, registered.merged))

    assert job.outputs.served_as == "merged"
    missing = f"no llama.cpp or Ollama deployment serves a GGUF of the base model {registered.base}"
    assert any(missing in e for e in events)


def _card(adapter: float, merged: float) -> list[ArtifactQuality]:
    return [
        ArtifactQuality(artifact="base", scores={"rouge_l": 0.1}, rows=8),
        ArtifactQuality(artifact="adapter", scores={"rouge_l": adapter, "bleu": 0.5}, rows=8),
        ArtifactQuality(artifact="f16", scores={"rouge_l": merged, "bleu": 0.5}, rows=8),
    ]


def test_a_quality_card_within_tolerance_serves_the_adapter_without_the_answer_check(
    deploying: Deploying, registered: Registered
) -> None:
    # The merged GGUF named here answers otherwise (the greedy check would refuse the adapter):
    # the card, which measured both on the evaluation rows, is the evidence that counts.
    card = _card(adapter=0.79, merged=0.80)
    job, events = deploying.run(_job(registered, registered.other_merged, quality=card))

    assert job.outputs.served_as == "adapter"
    assert job.outputs.agreement is None  # no greedy comparison ran
    assert _deployment(deploying.served, "tiny-llama")["adapters"] == [job.fine_tuned_model]
    [said] = [e for e in events if e.startswith(f"Serving {job.fine_tuned_model} as an adapter")]
    assert "rouge_l 0.7900 against 0.8000, bleu 0.5000 against 0.5000 of the merged f16" in said
    assert f"{ADAPTER_TOLERANCE} below it is tolerated" in said


def test_a_quality_card_short_of_the_merged_model_serves_it_merged(
    deploying: Deploying, registered: Registered
) -> None:
    card = _card(adapter=0.70, merged=0.80)
    job, events = deploying.run(_job(registered, registered.merged, quality=card))

    assert job.outputs.served_as == "merged"
    assert _deployment(deploying.served, job.fine_tuned_model)["spec"]["registry_gguf"] == (
        registered.merged
    )
    assert _deployment(deploying.served, "tiny-llama")["adapters"] == []
    [said] = [e for e in events if e.startswith(f"Serving {job.fine_tuned_model} merged")]
    assert "does not hold the merged model's quality" in said
    assert "rouge_l 0.7000 against 0.8000" in said
    assert "short on rouge_l" in said


def test_on_an_ollama_base_the_adapter_is_an_ollama_model_made_from_it(
    start_gateway: StartGateway, registered: Registered, tmp_path: Path
) -> None:
    """The Ollama path through the pipeline (against the Ollama contract fake, `fakes/ollama.py`):
    with no llama.cpp deployment of the base but an Ollama one, the job's GGUF adapter becomes an
    Ollama model created ``from`` the base's with ``adapters``, served under the job's name."""
    fake = FakeOllama()
    server = FakeServer(fake.app).start()
    try:
        served = start_gateway(
            {
                "registry_target": registered.target,
                "registry_local_files": True,
                "ollama_url": server.url,
            }
        )
        served.deploy(
            {
                "name": "tiny-ollama",
                "backend": "ollama",
                "registry_gguf": registered.base_gguf,
                "metadata": {"version": registered.base_gguf, "quantization": "f16"},
            }
        )
        store = JobStore.open(tmp_path / "jobs.sqlite3")
        try:
            deploying = Deploying(served, registered, store)
            job, events = deploying.run(
                _job(registered, registered.merged, quality=_card(adapter=0.8, merged=0.8))
            )
        finally:
            store.close()
        name = job.fine_tuned_model
        answer = served.client().chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=3
        )
    finally:
        server.stop()

    assert (job.outputs.served_as, job.outputs.base_deployment) == ("adapter", "tiny-ollama")
    spec = _deployment(served, name)["spec"]
    assert (spec["backend"], spec["base"], spec["registry_lora"]) == (
        "ollama",
        "tiny-ollama",
        [registered.adapter],
    )
    [created] = [body for body in fake.creates if body["model"] == ollama_model_name(name)]
    assert created["from"] == ollama_model_name("tiny-ollama")
    assert len(created["adapters"]) == 1
    # The fake's adapter models answer with their Ollama name first: this one answered.
    assert (answer.choices[0].message.content or "").startswith(f"[{ollama_model_name(name)}]")
    assert any("as an adapter on the base deployment 'tiny-ollama'" in e for e in events)
