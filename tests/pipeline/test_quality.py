"""A job with a validation file is evaluated before it is served: the base model and each
artifact (the GGUF adapter on the base's deployment, F16, Q8_0) answer the validation prompts
through llama-server, each answer is scored, and `deploy.require` decides whether anything is
deployed. Everything real: the services, LLaMA-Factory, llama.cpp, the OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from console.browser import Requests, chromium, laptop, watched
from playwright.sync_api import expect
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from forgeline_cli.__main__ import main
from forgeline_cli.walkthrough import fine_tune, write_fact_dataset
from forgeline_kit.tinymodel import DEMO_FACT
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import RunningStack

#: A row the model learns (the demo's fact) and one it cannot know.
UNKNOWN = ("What is the capital of Atlantis?", "Nobody has found it yet")


def _validation(path: Path) -> Path:
    rows = [(DEMO_FACT.question, DEMO_FACT.answer), UNKNOWN]
    path.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
            + "\n"
            for q, a in rows
        )
    )
    return path


def _job(running: RunningStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{running.stack.gateway_url}/v1/fine_tuning/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _version(running: RunningStack, reference: str) -> pb.Version:
    async def read() -> pb.Version:
        async with RegistryClient(running.stack.registry_target) as registry:
            version: pb.Version = await registry.resolve_version(
                pb.ResolveVersionRequest(reference=reference)
            )
            return version

    return asyncio.run(read())


def test_a_job_is_scored_per_artifact_and_served_when_it_beats_the_base(
    running: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    client = running.client
    validation = client.files.create(
        file=_validation(running.work / "quality-validation.jsonl").open("rb"), purpose="fine-tune"
    )
    job = fine_tune(
        client,
        write_fact_dataset(running.work / "quality-train.jsonl"),
        suffix="quality",
        on_event=lambda _: None,
        forgeline={
            "eval": {"graders": ["rouge_l", "exact"], "max_tokens": 16},
            "deploy": {
                "require": {"grader": "rouge_l", "beat_base_by": 0.2},
                "alias": "production",
            },
        },
        validation_file=validation.id,
    )
    assert job.status == "succeeded", job.error
    body = _job(running, job.id)
    outputs = body["forgeline"]["outputs"]
    card = {line["artifact"]: line for line in outputs["quality"]}

    # The quality card: the base, the adapter on the base's deployment, each GGUF file.
    assert list(card) == ["base", "adapter", "f16", "q8_0"]
    assert all(line["rows"] == 2 and not line.get("error") for line in card.values())
    assert card["f16"]["version"] == outputs["gguf"]["f16"]
    base, served = card["base"]["scores"], card["q8_0"]["scores"]
    # The fine-tune answers the fact exactly (one row of two); the random base does not.
    assert card["q8_0"]["passed"]["exact"] == 1
    assert served["exact"] == 0.5
    assert card["base"]["passed"].get("exact", 0) == 0
    assert served["rouge_l"] >= base["rouge_l"] + 0.2
    assert outputs["gate"] == "met"
    assert body["fine_tuned_model"] == outputs["deployment"]
    model = next(m for m in client.models.list().data if m.id == body["fine_tuned_model"])
    assert model.model_extra
    assert model.model_extra["metadata"]["quality"] == served  # /v1/models shows the card
    # Recorded on the registry version too, which the gate moved the alias to.
    version = _version(running, outputs["gguf"]["q8_0"])
    labels = dict(version.labels)
    assert float(labels["quality.rouge_l"]) == round(served["rouge_l"], 4)
    assert "production" in version.aliases
    # ... and `forgeline models show` prints it under the version.
    gguf_model = outputs["gguf"]["q8_0"].rpartition(":")[0]
    capsys.readouterr()
    assert main(["models", "show", gguf_model, "--registry", running.stack.registry_target]) == 0
    card_line = f"quality exact {labels['quality.exact']}, rouge_l {labels['quality.rouge_l']}"
    shown = capsys.readouterr().out
    assert card_line in shown
    # What the converter measured on Q8_0 against the F16 intermediate is on its line too.
    measured = card["q8_0"]["conversion"]
    assert set(measured) == {
        "perplexity",
        "perplexity_reference",
        "kl_divergence_mean",
        "same_top_token_rate",
    }
    assert 0 <= measured["kl_divergence_mean"] < 0.1
    assert 0.5 < measured["same_top_token_rate"] <= 1
    assert dict(version.lineage.metrics)["same_top_token_rate"] == measured["same_top_token_rate"]
    assert f"same top token {100 * measured['same_top_token_rate']:.1f}%" in shown
    assert card["adapter"]["conversion"] == {}

    # Each sample's score is rouge-score's own on the same texts (the run is the Evals API's).
    items = client.evals.runs.output_items.list(
        card["q8_0"]["run_id"], eval_id=card["q8_0"]["eval_id"]
    ).data
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for item in items:
        answer = item.sample.output[0].content or ""
        reference = item.datasource_item["reference"]
        rouge = next(r for r in item.results if r.name == "rouge_l")
        assert rouge.score == scorer.score(reference, answer)["rougeL"].fmeasure
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Quality of q8_0") and "KL divergence" in m for m in events)
    assert any(m.startswith("deploy.require met: rouge_l of q8_0") for m in events)

    # The job's page in the console shows the card and the verdict, and the evaluating step.
    requests = Requests()
    with (
        chromium() as browser,
        laptop(browser, requests) as context,
        watched(context, requests) as page,
    ):
        page.goto(f"{running.stack.gateway_url}/console/jobs/{job.id}")
        quality = page.locator(".card-quality")
        expect(quality.locator("tbody tr")).to_have_count(4)
        expect(quality.locator("[data-gate=met]")).to_contain_text("Deployed: rouge_l of q8_0")
        expect(quality.locator("thead")).to_contain_text("rouge_l")
        expect(page.locator(".timeline [data-stage=evaluating]")).to_have_attribute(
            "data-state", "done"
        )


def test_a_job_whose_gate_cannot_be_met_registers_its_versions_and_deploys_nothing(
    running: RunningStack,
) -> None:
    client = running.client
    validation = client.files.create(
        file=_validation(running.work / "gate-validation.jsonl").open("rb"), purpose="fine-tune"
    )
    # Nobody answers the unknown row: a mean ROUGE-L of 1.0 is out of reach.
    job = fine_tune(
        client,
        write_fact_dataset(running.work / "gate-train.jsonl"),
        suffix="gated",
        on_event=lambda _: None,
        forgeline={
            "arguments": {"num_train_epochs": 1},
            "eval": {"graders": ["rouge_l"], "max_tokens": 16},
            "deploy": {"require": {"grader": "rouge_l", "min": 1.0}, "alias": "production"},
        },
        validation_file=validation.id,
    )

    assert job.status == "succeeded", job.error
    body = _job(running, job.id)
    outputs = body["forgeline"]["outputs"]
    assert body["fine_tuned_model"] is None
    assert outputs.get("deployment") is None
    assert outputs["gate"] == "missed"
    assert set(outputs["gguf"]) == {"f16", "q8_0"}  # registered all the same
    assert outputs["adapter"]
    assert outputs["merged"]
    assert "production" not in _version(running, outputs["gguf"]["q8_0"]).aliases
    served = {m.id for m in client.models.list().data}
    assert not any(name.startswith(f"{job.id}:eval") for name in served)  # cleaned up
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    missed = next(m for m in events if m.startswith("deploy.require not met"))
    assert "rouge_l of q8_0 is" in missed
    assert "below the required 1.0 (short by" in missed
