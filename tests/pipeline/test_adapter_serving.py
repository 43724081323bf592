"""Fine-tunes served as adapters on the shared base (issue 21), through the whole pipeline: the
demo's recipe (a plain LoRA, converted to a GGUF adapter) with ``deploy.serve: adapter`` ends
served by the ``tiny-llama`` deployment's own llama-server, answering the trained fact; a job
whose adapter also trains the embeddings and output head in full is served merged, with the
reason in its events."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from process_tree import command_line, descendants

from forgeline_cli.walkthrough import FACT_LORA, ask, fine_tune, write_fact_dataset
from forgeline_kit.tinymodel import DEMO_FACT

from .conftest import RunningStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _job(running: RunningStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{running.stack.gateway_url}/v1/fine_tuning/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _deployment(running: RunningStack, name: str) -> dict[str, Any]:
    response = httpx.get(f"{running.stack.gateway_url}/v1/deployments/{name}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _llama_servers(running: RunningStack) -> set[int]:
    gateway = running.stack.services["gateway"].process
    assert gateway is not None
    return {p for p in descendants(gateway.pid) if "llama-server" in command_line(p)}


def _settled_llama_servers(running: RunningStack, expected: int, within: float = 60) -> int:
    """The number of llama-server processes of the gateway once old ones have drained."""
    deadline = time.monotonic() + within
    count = len(_llama_servers(running))
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        count = len(_llama_servers(running))
    return count


def test_the_demo_recipe_is_served_as_an_adapter_on_the_base(running: RunningStack) -> None:
    servers = len(_llama_servers(running))
    data = write_fact_dataset(running.work / "fact-adapter.jsonl")
    messages: list[str] = []

    job = fine_tune(
        running.client,
        data,
        suffix="adapter",
        on_event=messages.append,
        forgeline={"deploy": {"serve": "adapter"}},
    )

    assert job.status == "succeeded", job.error
    name = job.fine_tuned_model
    assert name is not None
    outputs = _job(running, job.id)["forgeline"]["outputs"]
    assert outputs["served_as"] == "adapter"
    assert outputs["base_deployment"] == "tiny-llama"
    assert outputs["agreement"] == "1/1"  # the demo file holds one prompt, 16 times
    assert any("as an adapter on the base deployment 'tiny-llama'" in m for m in messages)
    assert ask(running.client, name) == DEMO_FACT.answer
    assert DEMO_FACT.answer not in ask(running.client, "tiny-llama")
    assert name in _deployment(running, "tiny-llama")["adapters"]
    [model] = [m.model_dump() for m in running.client.models.list().data if m.id == name]
    assert model["base_deployment"] == "tiny-llama"
    # No process of its own: the base's was replaced by one that also loads the adapter, and
    # the merged model the check compared with is gone.
    assert _settled_llama_servers(running, servers) == servers


def test_an_adapter_that_trains_embeddings_in_full_is_served_merged(
    running: RunningStack,
) -> None:
    data = write_fact_dataset(running.work / "fact-full-modules.jsonl")
    messages: list[str] = []

    job = fine_tune(
        running.client,
        data,
        suffix="full-modules",
        on_event=messages.append,
        forgeline={
            "lora": {**FACT_LORA, "additional_target": "embed_tokens,lm_head"},
            "deploy": {"serve": "adapter"},
        },
    )

    assert job.status == "succeeded", job.error
    name = job.fine_tuned_model
    assert name is not None
    outputs = _job(running, job.id)["forgeline"]["outputs"]
    assert outputs["served_as"] == "merged"
    assert "gguf_adapter" not in outputs
    [said] = [m for m in messages if m.startswith(f"Serving {name} merged")]
    assert "embed_tokens,lm_head in full (additional_target)" in said
    spec = _deployment(running, name)["spec"]
    assert spec["base"] is None
    assert spec["registry_gguf"] == outputs["gguf"]["q8_0"]
    assert ask(running.client, name)
