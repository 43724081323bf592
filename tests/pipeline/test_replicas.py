"""Gateway replicas on one database (issue 20): a second gateway process beside the stack's,
sharing its database (`make test-postgres`: PostgreSQL). A file uploaded through one is there
through the other; a fine-tuning job created on one, whose gateway is then SIGKILLed while it
trains, is taken over by the other from its persisted stage and ends `succeeded` with the trained
answer, trained once, its events without gaps or duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from forgeline_cli.stack import ServiceProcess
from forgeline_cli.walkthrough import BASE_MODEL, FACT_LORA, ask, follow, write_fact_dataset
from forgeline_kit.llamacpp.server import free_port
from forgeline_kit.tinymodel import DEMO_FACT

from .conftest import RunningStack
from .test_resilience import _trainer_jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

READY_WITHIN_S = 120.0
TRAINING_WITHIN_S = 300.0


@pytest.fixture
def second_gateway(running: RunningStack) -> Iterator[ServiceProcess]:
    """Another gateway process on the stack's database, with a model cache of its own (as a
    replica on another host has). The stack's own gateway is running again afterwards."""
    first = running.stack.services["gateway"]
    root = running.work / "gateway-b"
    env = first.env | {
        "FORGELINE_GATEWAY_MODEL_CACHE": str(root / "models"),
        "FORGELINE_GATEWAY_HUB_CACHE": str(root / "hub"),
    }
    root.mkdir()
    second = ServiceProcess("gateway", env, root / "gateway.log", port=0, metrics_port=0)
    second.use_ports(free_port(), free_port())
    second.start()
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while not second.ready():
            assert second.alive(), f"the second gateway exited:\n{second.log_tail()}"
            assert time.monotonic() < deadline, f"not ready:\n{second.log_tail()}"
            time.sleep(0.2)
        yield second
    finally:
        second.stop()
        if not first.alive():
            running.stack.restart("gateway")


def _forgeline_view(gateway: ServiceProcess, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"http://{gateway.target}/v1/fine_tuning/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    view: dict[str, Any] = response.json()["forgeline"]
    return view


def test_a_job_whose_gateway_is_killed_is_finished_by_another_replica(
    running: RunningStack, second_gateway: ServiceProcess
) -> None:
    first = running.stack.services["gateway"]
    other = OpenAI(base_url=f"http://{second_gateway.target}/v1", api_key="test", max_retries=0)
    trainer_jobs_before = _trainer_jobs(running)
    data = write_fact_dataset(running.work / "fact-replicas.jsonl")
    with data.open("rb") as opened:
        uploaded = running.client.files.create(file=opened, purpose="fine-tune")
    assert other.files.retrieve(uploaded.id).filename == data.name

    job = running.client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=uploaded.id,
        suffix="replicas",
        seed=42,
        method={"type": "supervised"},
        extra_body={
            "forgeline": {
                "lora": FACT_LORA,
                "arguments": {"logging_steps": 4},
                "quantizations": ["q8_0"],
            }
        },
    )
    deadline = time.monotonic() + TRAINING_WITHIN_S
    while not _forgeline_view(second_gateway, job.id)["trainer_job_id"]:
        assert time.monotonic() < deadline, "the job never reached the trainer"
        time.sleep(0.2)
    first.stop(kill=True)  # the replica driving the job dies mid-training

    finished = follow(other, job.id, on_event=lambda _: None)

    assert finished.status == "succeeded", finished.error
    assert finished.fine_tuned_model is not None
    assert ask(other, finished.fine_tuned_model) == DEMO_FACT.answer
    assert _trainer_jobs(running) == trainer_jobs_before + 1, "trained once"
    events = other.fine_tuning.jobs.list_events(job.id, limit=100).data
    sequences = sorted(int(event.id.rsplit("-", 1)[1]) for event in events)
    assert sequences == list(range(sequences[0], sequences[0] + len(events))), "gaps or twins"
    assert len(events) == 100 or sequences[0] == 1
    messages = [event.message for event in events]
    assert sum(m.startswith("Created fine-tuning job") for m in messages) == 1
