"""How the pipeline's deploying stage serves a job (`deploy.serve`), without training: a real
registry holding the tiny model, its GGUF and a fine-tune's HF/PEFT adapter, GGUF adapter and
merged GGUFs (made from random LoRA weights, `tests/gguf_adapters.py`), a real gateway serving
the base GGUF, and the pipeline's `_deploy` run on a job record that names them. On Ollama and
vLLM bases the gateway talks to those backends' contract fakes.

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
from database_urls import database_url
from fakes.docker_engine import FakeDockerEngine
from fakes.ollama import FakeOllama
from fakes.server import FakeServer
from gguf_adapters import make_gguf_adapter

from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import register_base_model
from forgeline_gateway.backends.ollama import ollama_model_name
from forgeline_gateway.fine_tuning.agreement import Messages
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.quality import ADAPTER_TOLERANCE
from forgeline_gateway.fine_tuning.records import (
    ArtifactQuality,
    EvalSettings,
    JobRecord,
    JobRequest,
    Outputs,
)
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

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
    hf_adapter: str  # the HF/PEFT adapter it was converted from
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
    assert made.hf is not None
    assert other.merged_gguf is not None
    stack = LocalStack(work / "stack")
    stack.start("registry")
    try:
        base = register_base_model(stack.registry_target, tiny_model)

        def stage(name: str, file: Path) -> Path:
            """A directory holding `file` (or, for a directory, its files) to push."""
            directory = work / "push" / name
            if file.is_dir():
                shutil.copytree(file, directory)
            else:
                directory.mkdir(parents=True)
                shutil.copy2(file, directory / file.name)
            return directory

        async def push(name: str, file: Path, kind: int, parent: str | None = None) -> str:
            directory = stage(name, file)
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
            hf_adapter=asyncio.run(push("ft-adapter-hf", made.hf, rpb.VERSION_KIND_ADAPTER)),
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
                    registry=registry,
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
    store = JobStore.open(database_url(tmp_path / "jobs.sqlite3"))
    yield Deploying(served, registered, store)
    store.close()


def _job(registered: Registered, merged: str, serve: str = "adapter", **outputs: Any) -> JobRecord:
    request = JobRequest.model_validate(
        {
            "model": "tiny-llama",
            "training_file": "file-1",
            "quantizations": ["f16"],
            "deploy": {"quantization": "f16", "serve": serve},
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
    [said] = [e for e in events if missing in e]
    assert "no vLLM deployment serves it with enable_lora" in said
    assert f"forgeline deploy {registered.base} --backend llamacpp --quantization f16" in said


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
        store = JobStore.open(database_url(tmp_path / "jobs.sqlite3"))
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


#: The vLLM image the Docker Engine fake holds and the gateway starts (as in test_vllm_adapters).
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDockerEngine]:
    """The Docker Engine contract fake (`fakes/docker_engine.py`), whose containers run the
    vLLM contract fake (`fakes/vllm.py`), as the gateway's DOCKER_HOST."""
    fake = FakeDockerEngine(images={VLLM_IMAGE})
    server = FakeServer(fake.app).start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.port}")
    for variable in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(variable, raising=False)
    yield fake
    fake.close()
    server.stop()


def _vllm_base(start_gateway: StartGateway, registered: Registered, tmp_path: Path) -> Served:
    """A gateway whose only deployment of the base is a vLLM container of the base version
    itself (`registry_model`, `enable_lora`), ``tiny-vllm``."""
    served = start_gateway(
        {
            "registry_target": registered.target,
            "registry_local_files": True,
            "model_cache": tmp_path / "models",
            "vllm_image": VLLM_IMAGE,
            "vllm_start_seconds": 30,
        },
        database=tmp_path / "gateway.sqlite3",
    )
    served.deploy(
        {
            "name": "tiny-vllm",
            "backend": "vllm",
            "registry_model": registered.base,
            "enable_lora": True,
        }
    )
    return served


def _on_vllm(
    start_gateway: StartGateway, registered: Registered, tmp_path: Path, card: list[ArtifactQuality]
) -> tuple[Served, JobRecord, list[str]]:
    """The deploying stage of a job with the HF adapter and `card`, on a vLLM base
    (`_vllm_base`)."""
    served = _vllm_base(start_gateway, registered, tmp_path)
    store = JobStore.open(database_url(tmp_path / "jobs.sqlite3"))
    try:
        job, events = Deploying(served, registered, store).run(
            _job(registered, registered.merged, quality=card, adapter=registered.hf_adapter)
        )
    finally:
        store.close()
    return served, job, events


def test_on_a_vllm_base_the_hf_adapter_is_loaded_into_its_server(
    start_gateway: StartGateway, registered: Registered, engine: FakeDockerEngine, tmp_path: Path
) -> None:
    """The vLLM path through the pipeline: with no llama.cpp or Ollama deployment of the base
    but a vLLM container of the base version with `enable_lora`, the job's HF/PEFT adapter
    (not its GGUF one: vLLM serves PEFT adapters as trained) is loaded into that server under
    the job's name, and requests for the job's model select it."""
    served, job, events = _on_vllm(
        start_gateway, registered, tmp_path, _card(adapter=0.8, merged=0.8)
    )
    name = job.fine_tuned_model
    answer = served.client().chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )

    assert job.stage == "succeeded"
    assert (job.outputs.served_as, job.outputs.base_deployment) == ("adapter", "tiny-vllm")
    assert job.outputs.deployment == name
    deployed = _deployment(served, name)
    spec = deployed["spec"]
    assert (spec["backend"], spec["base"], spec["registry_adapter"]) == (
        "vllm",
        "tiny-vllm",
        registered.hf_adapter,
    )
    assert spec["metadata"]["version"] == registered.hf_adapter
    assert _deployment(served, "tiny-vllm")["adapters"] == [name]
    [container] = engine.containers.values()
    vllm = container.vllm
    assert vllm is not None
    assert [body["lora_name"] for call, body in vllm.lora_calls if call == "load"] == [name]
    # The adapter's lora_name is the deployment's name: it is what selects it in vLLM.
    assert answer.model == name
    assert vllm.requests[-1]["model"] == name
    # Only the base and the adapter: no merged deployment was made.
    names = [d["name"] for d in served.admin("GET", "/v1/deployments").json()["data"]]
    assert sorted(names) == sorted(["tiny-vllm", name])
    assert any("as an adapter on the base deployment 'tiny-vllm'" in e for e in events)


def test_on_a_vllm_base_a_card_short_of_the_merged_model_serves_it_merged(
    start_gateway: StartGateway, registered: Registered, engine: FakeDockerEngine, tmp_path: Path
) -> None:
    served, job, events = _on_vllm(
        start_gateway, registered, tmp_path, _card(adapter=0.70, merged=0.80)
    )

    assert job.outputs.served_as == "merged"
    spec = _deployment(served, job.fine_tuned_model)["spec"]
    assert (spec["backend"], spec["registry_gguf"], spec["base"]) == (
        "llamacpp",
        registered.merged,
        None,
    )
    assert _deployment(served, "tiny-vllm")["adapters"] == []
    [container] = engine.containers.values()
    assert container.vllm is not None
    assert container.vllm.lora_calls == []  # the card decided: nothing was loaded
    [said] = [e for e in events if e.startswith(f"Serving {job.fine_tuned_model} merged")]
    assert "does not hold the merged model's quality" in said
    assert "rouge_l 0.7000 against 0.8000" in said


class _Scores:
    """The pipeline's quality check (`QualityCheck.open_eval` and `score`) without the Evals
    API: each artifact answers one prompt through the gateway (so it must be served), and
    scores a fixed 0.5."""

    def __init__(self, served: Served) -> None:
        self.check = _Check(served)
        #: (artifact, version, model) of each line scored, in order.
        self.scored: list[tuple[str, str | None, str]] = []

    async def open_eval(self, job_id: str, options: EvalSettings) -> str:
        return "eval-1"

    async def score(
        self,
        eval_id: str,
        *,
        artifact: str,
        version: str | None,
        model: str,
        rows: list[dict[str, Any]],
        options: EvalSettings,
    ) -> ArtifactQuality:
        await self.check.answer(model, PROMPTS[0])
        self.scored.append((artifact, version, model))
        return ArtifactQuality(
            artifact=artifact, version=version, scores={"rouge_l": 0.5}, rows=1, eval_id=eval_id
        )


def test_on_a_vllm_base_the_quality_card_scores_the_hf_adapter_on_it(
    start_gateway: StartGateway, registered: Registered, engine: FakeDockerEngine, tmp_path: Path
) -> None:
    """The card's base line is the vLLM base (its `registry_model`) and its adapter line the
    HF/PEFT adapter loaded on that base for the evaluation, then unloaded."""
    served = _vllm_base(start_gateway, registered, tmp_path)
    scores = _Scores(served)
    job = _job(registered, registered.merged, adapter=registered.hf_adapter)
    eval_adapter = f"{job.id}:eval-adapter"

    store = JobStore.open(database_url(tmp_path / "jobs.sqlite3"))
    store.put(job)

    async def card() -> list[ArtifactQuality]:
        async with RegistryClient(registered.target) as registry:
            pipeline = Pipeline(
                store,
                trainer=cast(Any, None),
                converter=cast(Any, None),
                registry=registry,
                files=cast(Any, None),
                deployments=served.gateway.app.state.manager,
                organization="forgeline",
                quality=cast(Any, scores),
            )
            return await pipeline._quality_card(job, [], EvalSettings(), "f16")

    try:
        lines = served.gateway.call(card(), timeout=300)
    finally:
        store.close()

    assert [(line.artifact, line.version, line.error) for line in lines] == [
        ("base", registered.base, None),
        ("adapter", registered.hf_adapter, None),
        ("f16", registered.merged, None),
    ]
    assert scores.scored[:2] == [
        ("base", registered.base, "tiny-vllm"),
        ("adapter", registered.hf_adapter, eval_adapter),
    ]
    [container] = engine.containers.values()
    vllm = container.vllm
    assert vllm is not None
    assert [(call, body["lora_name"]) for call, body in vllm.lora_calls] == [
        ("load", eval_adapter),
        ("unload", eval_adapter),
    ]
    assert vllm.requests[1]["model"] == eval_adapter
    names = [d["name"] for d in served.admin("GET", "/v1/deployments").json()["data"]]
    assert names == ["tiny-vllm"]  # the evaluation's deployments are gone
