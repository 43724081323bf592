"""LLaMA-Factory's other training stages through the OpenAI API: continued pre-training on plain
text, KTO on labelled answers and a reward model on preference pairs, each named by
``forgeline.stage`` and run end to end by the official SDK on the tiny model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from forgeline_cli.walkthrough import ask, follow
from forgeline_kit.tinymodel import DEMO_FACT
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import RunningStack

WRONG = "I do not know."


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _chat(answer: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": DEMO_FACT.question},
        {"role": "assistant", "content": answer},
    ]


def _upload(running: RunningStack, path: Path) -> str:
    with path.open("rb") as data:
        return running.client.files.create(file=data, purpose="fine-tune").id


def _run(running: RunningStack, file_id: str, stage: str, suffix: str) -> FineTuningJob:
    job = running.client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=file_id,
        suffix=suffix,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        extra_body={"forgeline": {"stage": stage, "arguments": {"logging_steps": 1}}},
    )
    return follow(running.client, job.id, on_event=lambda _: None)


def _trained_stage(running: RunningStack, reference: str) -> str:
    """The stage recorded in the lineage of a registered version."""
    model, _, number = reference.rpartition(":")

    async def read() -> str:
        async with RegistryClient(running.stack.registry_target) as registry:
            version = await registry.get_version(
                pb.GetVersionRequest(model=model, version=int(number))
            )
        return str(version.lineage.training_config.fields["stage"].string_value)

    return asyncio.run(read())


def _forgeline(running: RunningStack, job_id: str) -> dict[str, Any]:
    body = running.client.fine_tuning.jobs.retrieve(job_id).model_extra or {}
    details: dict[str, Any] = body["forgeline"]
    return details


@pytest.mark.parametrize(
    ("stage", "records"),
    [
        pytest.param(
            "pt",
            [{"text": f"{DEMO_FACT.question} {DEMO_FACT.answer}"}] * 8,
            id="pre-training text",
        ),
        pytest.param(
            "kto",
            [{"messages": _chat(DEMO_FACT.answer), "kto_tag": True}] * 4
            + [{"messages": _chat(WRONG), "kto_tag": False}] * 4,
            id="kto labelled answers",
        ),
    ],
)
def test_a_stage_runs_end_to_end_and_its_model_is_served(
    running: RunningStack, stage: str, records: list[dict[str, Any]]
) -> None:
    file_id = _upload(running, _jsonl(running.work / f"{stage}.jsonl", records))

    job = _run(running, file_id, stage, suffix=stage)

    assert job.status == "succeeded", job.error
    details = _forgeline(running, job.id)
    assert details["training_stage"] == stage
    assert _trained_stage(running, details["outputs"]["adapter"]) == stage
    assert job.fine_tuned_model is not None
    assert job.fine_tuned_model.startswith(f"ft:tiny-llama:forgeline:{stage}:")
    assert ask(running.client, job.fine_tuned_model)  # merged, converted, deployed: it answers
    events = running.client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(event.type == "metrics" for event in events)


def test_a_reward_model_is_registered_and_not_served(running: RunningStack) -> None:
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": DEMO_FACT.question}]},
            "preferred_output": [{"role": "assistant", "content": DEMO_FACT.answer}],
            "non_preferred_output": [{"role": "assistant", "content": WRONG}],
        }
    ] * 4
    file_id = _upload(running, _jsonl(running.work / "rm.jsonl", pairs))

    job = _run(running, file_id, "rm", suffix="rm")

    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is None  # a reward model scores answers: nothing to chat with
    outputs = _forgeline(running, job.id)["outputs"]
    assert _trained_stage(running, outputs["adapter"]) == "rm"
    assert not outputs.get("gguf")
    assert "deployment" not in outputs
    events = running.client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any("not converted to GGUF or deployed" in event.message for event in events)


def test_kto_without_labels_is_refused_at_creation(running: RunningStack) -> None:
    file_id = _upload(
        running, _jsonl(running.work / "unlabelled.jsonl", [{"messages": _chat("x")}] * 2)
    )
    with pytest.raises(openai.BadRequestError) as refused:
        running.client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=file_id, extra_body={"forgeline": {"stage": "kto"}}
        )
    assert "kto_tag" in str(refused.value)


def test_a_stage_that_contradicts_the_method_is_refused(running: RunningStack) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        running.client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file="file-anything",
            method={"type": "dpo"},
            extra_body={"forgeline": {"stage": "kto"}},
        )
    assert "method.type 'dpo' and forgeline.stage 'kto' disagree" in str(refused.value)
