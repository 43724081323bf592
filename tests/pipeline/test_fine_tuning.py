"""The whole loop through the services and the OpenAI SDK: upload, fine-tune, chat.

Everything is real: four service processes talking gRPC, LLaMA-Factory training the tiny model on
CPU, llama.cpp converting and serving it, the official `openai` SDK over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgeline_cli.walkthrough import ask, fine_tune, follow, write_fact_dataset
from forgeline_kit.tinymodel import DEMO_FACT
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import RunningStack

#: Checkpoints every 40 steps, so the job lists some (the demo's "auto" recipe runs 104 steps).
ARGUMENTS = {"logging_steps": 8, "save_steps": 40}


def _job_json(running: RunningStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{running.stack.gateway_url}/v1/fine_tuning/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _deploy(running: RunningStack, name: str, **spec: Any) -> None:
    response = httpx.post(
        f"{running.stack.gateway_url}/v1/deployments",
        json={"name": name, "backend": "llamacpp", **spec},
        timeout=300,
    )
    assert response.status_code == 201, response.text


def _merged_answer(running: RunningStack, reference: str) -> str:
    """Greedy generation with transformers on the merged HF weights pulled from the registry."""
    target = running.work / reference.replace(":", "-")

    async def pull() -> None:
        async with RegistryClient(
            running.stack.registry_target, accept_local_files=True
        ) as registry:
            await registry.pull(reference, target)

    asyncio.run(pull())
    tokenizer: Any = AutoTokenizer.from_pretrained(target)
    model: Any = AutoModelForCausalLM.from_pretrained(target)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": DEMO_FACT.question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=32, do_sample=False)
    text: str = tokenizer.decode(
        output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return text.strip()


def _versions_of_job(running: RunningStack, job_id: str) -> list[str]:
    async def scan() -> list[str]:
        found = []
        async with RegistryClient(running.stack.registry_target) as registry:
            models = await registry.list_models(pb.ListModelsRequest(page_size=1000))
            for model in models.models:
                versions = await registry.list_versions(
                    pb.ListVersionsRequest(model=model.name, page_size=1000)
                )
                found += [
                    f"{v.model}:{v.number}"
                    for v in versions.versions
                    if v.labels.get("fine_tuning_job") == job_id
                ]
        return found

    return asyncio.run(scan())


@pytest.fixture(scope="module")
def trained(running: RunningStack) -> dict[str, Any]:
    """One successful job of the demo recipe, shared by the assertions below."""
    data = write_fact_dataset(running.work / "fact.jsonl")
    job = fine_tune(
        running.client, data, on_event=lambda _: None, forgeline={"arguments": ARGUMENTS}
    )
    assert job.status == "succeeded", job.error
    return _job_json(running, job.id)


def test_the_fine_tuned_model_answers_with_the_trained_fact(
    running: RunningStack, trained: dict[str, Any]
) -> None:
    # The demo sets no hyperparameter: "auto" sized them to its 8 examples and the tiny model.
    chosen = trained["hyperparameters"]
    assert (chosen["n_epochs"], chosen["batch_size"]) == (13, 1)
    assert chosen["learning_rate_multiplier"] > 10
    assert trained["method"]["supervised"]["hyperparameters"] == chosen
    assert trained["fine_tuned_model"].startswith("ft:tiny-llama:forgeline:demo:")
    assert ask(running.client, trained["fine_tuned_model"]) == DEMO_FACT.answer
    assert DEMO_FACT.answer not in ask(running.client, "tiny-llama")
    served = {m.id for m in running.client.models.list().data}
    assert trained["fine_tuned_model"] in served
    # Nor how to serve it: an adapter on the base's process is the default, where it holds.
    outputs = trained["forgeline"]["outputs"]
    assert (outputs["served_as"], outputs["base_deployment"]) == ("adapter", "tiny-llama")


def test_the_trained_answer_survives_every_stage(
    running: RunningStack, trained: dict[str, Any]
) -> None:
    outputs = trained["forgeline"]["outputs"]
    assert set(outputs["gguf"]) == {"f16", "q8_0"}
    # The merged model, as HF weights.
    assert DEMO_FACT.answer in _merged_answer(running, outputs["merged"])
    # The merged model as GGUF F16 (the deployed model is the Q8_0 one).
    _deploy(running, "tiny-llama-ft-f16", registry_gguf=outputs["gguf"]["f16"])
    assert ask(running.client, "tiny-llama-ft-f16") == DEMO_FACT.answer
    # The LoRA adapter as a GGUF adapter, applied by llama-server on the base model's GGUF,
    # F16 and Q8_0.
    for base_type in ("f16", "q8_0"):
        name = f"tiny-llama-{base_type}-with-adapter"
        _deploy(
            running,
            name,
            registry_gguf=running.base_gguf[base_type],
            registry_lora=[outputs["gguf_adapter"]],
        )
        assert ask(running.client, name) == DEMO_FACT.answer, base_type


def test_events_and_checkpoints_are_listed_through_the_sdk(
    running: RunningStack, trained: dict[str, Any]
) -> None:
    events = list(running.client.fine_tuning.jobs.list_events(trained["id"], limit=5))
    messages = [e.message for e in events]
    assert "The job has successfully completed" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics
    losses = [e.data["train_loss"] for e in metrics if isinstance(e.data, dict)]
    assert len(losses) == len(metrics)
    assert losses[0] < losses[-1], "newest first: the last loss listed is the earliest"
    checkpoints = running.client.fine_tuning.jobs.checkpoints.list(trained["id"]).data
    assert [c.step_number for c in checkpoints] == sorted(
        (c.step_number for c in checkpoints), reverse=True
    )
    assert checkpoints
    assert checkpoints[0].fine_tuning_job_id == trained["id"]


def test_a_malformed_training_file_is_refused_at_upload_naming_the_line(
    running: RunningStack,
) -> None:
    path = running.work / "broken.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with path.open("rb") as data, pytest.raises(openai.BadRequestError) as refused:
        running.client.files.create(file=data, purpose="fine-tune")
    assert "line 2" in str(refused.value)


def test_a_job_whose_training_fails_ends_failed_with_nothing_registered(
    running: RunningStack,
) -> None:
    data = write_fact_dataset(running.work / "fact-fails.jsonl")
    # Valid for LLaMA-Factory's argument parser; PEFT refuses it once the model is loaded.
    job = fine_tune(
        running.client,
        data,
        suffix="fails",
        on_event=lambda _: None,
        forgeline={"lora": {"target": "no_such_module"}, "arguments": {"num_train_epochs": 1}},
    )
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.code
    assert job.error.message
    assert job.fine_tuned_model is None
    assert _versions_of_job(running, job.id) == []
    served = {m.id for m in running.client.models.list().data}
    assert not any(":fails:" in name for name in served)


def test_a_job_survives_a_trainer_crash_and_a_gateway_restart(running: RunningStack) -> None:
    data = write_fact_dataset(running.work / "fact-restart.jsonl")
    client = running.client
    with data.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        suffix="restart",
        seed=7,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 60,
                    "batch_size": 16,
                    "learning_rate_multiplier": 50.0,
                }
            },
        },
        extra_body={
            "forgeline": {
                "lora": {"additional_target": "lm_head,embed_tokens"},
                "arguments": {"logging_steps": 5, "save_steps": 5},
            }
        },
    )

    def trained_some_steps(message: str) -> None:
        if message.startswith("Checkpoint") and running.stack.services["trainer"].alive():
            raise _Interrupt

    with contextlib.suppress(_Interrupt):
        follow(client, job.id, trained_some_steps)
    running.stack.restart("trainer", kill=True)
    running.stack.restart("gateway")

    finished = follow(client, job.id, lambda _: None)
    assert finished.status == "succeeded", finished.error
    assert finished.fine_tuned_model is not None
    assert ask(client, finished.fine_tuned_model) == DEMO_FACT.answer
    # Embeddings and output head trained in full do not fit llama.cpp's LoRA format: the job
    # says so and serves the merged model.
    assert "gguf_adapter" not in _job_json(running, job.id)["forgeline"]["outputs"]
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any("served merged, not as a GGUF adapter" in m for m in messages)


class _Interrupt(Exception):  # noqa: N818 (a signal for the test, not an error)
    pass


def test_a_cancelled_job_stops_training_and_keeps_nothing(running: RunningStack) -> None:
    data = write_fact_dataset(running.work / "fact-cancel.jsonl")
    client = running.client
    with data.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        suffix="cancel",
        # Long enough that it cannot end before the cancel arrives: the tiny model trains
        # 200 epochs in a few seconds, and CI once saw the job succeed first.
        hyperparameters={"n_epochs": 10_000, "batch_size": 16},
        extra_body={"forgeline": {"arguments": {"logging_steps": 1}}},
    )

    def training(message: str) -> None:
        if message.startswith("Step "):
            raise _Interrupt

    with contextlib.suppress(_Interrupt):
        follow(client, job.id, training, poll_seconds=0.2)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.fine_tuned_model is None
    assert _versions_of_job(running, job.id) == []
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled", "cancel is idempotent"
    trainer_state = _job_json(running, job.id)["forgeline"]["trainer_state"]
    assert trainer_state in ("cancelling", "cancelled")
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert "The job was cancelled; nothing it made was kept" in messages
