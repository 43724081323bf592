"""Failures that are not the user's do not cost the user the training (issue 18).

On the package's stack: a LLaMA-Factory run and a conversion worker SIGKILLed mid-work (what the
OOM killer or a preempted node does) are run again by the trainer (from the last checkpoint) and
the converter (on the downloaded inputs), and the job still succeeds; with the converter's retries
exhausted the job fails but keeps what it trained, and `forgeline fine-tuning retry` finishes it
without training again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from process_tree import command_line, descendants, kill_busy_converter_worker, started

from forgeline_cli.__main__ import main as forgeline
from forgeline_cli.walkthrough import ask, fine_tune, write_fact_dataset
from forgeline_kit.grpc.client import make_channel
from forgeline_kit.tinymodel import DEMO_FACT
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from forgeline_registry_client.client import RegistryClient

from .conftest import RunningStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: One epoch of the demo recipe (16 steps), a checkpoint every 4 steps.
ARGUMENTS = {"num_train_epochs": 1, "save_steps": 4, "logging_steps": 2}
KILL_WITHIN_S = 600.0


class _Killer:
    """Runs ``kill()`` on a thread while the job runs; what it killed, once joined."""

    def __init__(self, kill: Callable[[], int | None]) -> None:
        self.killed: int | None = None
        self._thread = threading.Thread(target=self._run, args=(kill,), daemon=True)
        self._thread.start()

    def _run(self, kill: Callable[[], int | None]) -> None:
        self.killed = kill()

    def join(self) -> int | None:
        self._thread.join(timeout=KILL_WITHIN_S)
        return self.killed


def _job_json(running: RunningStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{running.stack.gateway_url}/v1/fine_tuning/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _newest_job_id(running: RunningStack, suffix: str) -> str | None:
    response = httpx.get(f"{running.stack.gateway_url}/v1/fine_tuning/jobs?limit=5", timeout=30)
    response.raise_for_status()
    for job in response.json()["data"]:
        if job["user_provided_suffix"] == suffix:
            return str(job["id"])
    return None


def _kill_training_after_a_checkpoint(running: RunningStack, suffix: str) -> int | None:
    """SIGKILL the LLaMA-Factory run of the job with ``suffix`` once it saved a checkpoint."""
    trainer = running.stack.services["trainer"]
    assert trainer.process is not None
    jobs = running.stack.state_dir / "trainer" / "jobs"
    deadline = time.monotonic() + KILL_WITHIN_S
    trainer_job = ""
    while time.monotonic() < deadline:
        if not trainer_job:
            job_id = _newest_job_id(running, suffix)
            if job_id:
                trainer_job = _job_json(running, job_id)["forgeline"]["trainer_job_id"] or ""
            if not trainer_job:
                time.sleep(0.2)
                continue
        output = jobs / trainer_job / "output"
        if any((c / "trainer_state.json").is_file() for c in output.glob("checkpoint-*")):
            runs = [
                pid
                for pid in descendants(trainer.process.pid)
                if trainer_job in command_line(pid) and "train.yaml" in command_line(pid)
            ]
            if runs:
                leader = min(runs, key=lambda pid: (started(pid), pid))
                os.kill(leader, signal.SIGKILL)
                return leader
        time.sleep(0.05)
    return None


def _kill_a_conversion_worker(running: RunningStack) -> int | None:
    converter = running.stack.services["converter"]
    assert converter.process is not None
    return kill_busy_converter_worker(converter.process.pid, KILL_WITHIN_S)


def _messages(running: RunningStack, job_id: str) -> list[str]:
    events = running.client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [event.message for event in reversed(events)]


def _labels(running: RunningStack, references: list[str]) -> dict[str, dict[str, str]]:
    async def read() -> dict[str, dict[str, str]]:
        found = {}
        async with RegistryClient(running.stack.registry_target) as registry:
            for reference in references:
                model, _, number = reference.rpartition(":")
                version = await registry.get_version(
                    rpb.GetVersionRequest(model=model, version=int(number))
                )
                found[reference] = dict(version.labels)
        return found

    return asyncio.run(read())


def _trainer_jobs(running: RunningStack) -> int:
    async def count() -> int:
        async with make_channel(running.stack.services["trainer"].target) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            page = await stub.ListJobs(trainer_pb2.ListJobsRequest(page_size=1000))
            return len(page.jobs)

    return asyncio.run(count())


def _trainer_job(running: RunningStack, job_id: str) -> trainer_pb2.Job:
    async def get() -> trainer_pb2.Job:
        async with make_channel(running.stack.services["trainer"].target) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            job: trainer_pb2.Job = await stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id))
            return job

    return asyncio.run(get())


ATTEMPTS_SETTING = "FORGELINE_CONVERTER_WORKER_ATTEMPTS"


@pytest.fixture
def converter_attempts_once(running: RunningStack) -> Iterator[None]:
    """The stack's converter runs tool work once (a killed worker fails the conversion) until
    the test sets it back."""
    converter = running.stack.services["converter"]
    converter.env[ATTEMPTS_SETTING] = "1"
    running.stack.restart("converter")
    try:
        yield
    finally:
        if converter.env.pop(ATTEMPTS_SETTING, None) is not None:
            running.stack.restart("converter")


def test_a_killed_training_run_and_conversion_worker_are_run_again(running: RunningStack) -> None:
    data = write_fact_dataset(running.work / "fact-killed.jsonl")
    training = _Killer(lambda: _kill_training_after_a_checkpoint(running, "killed"))
    conversion = _Killer(lambda: _kill_a_conversion_worker(running))

    job = fine_tune(
        running.client,
        data,
        suffix="killed",
        on_event=lambda _: None,
        forgeline={"arguments": ARGUMENTS},
    )

    assert training.join() is not None, "no LLaMA-Factory run was killed"
    assert conversion.join() is not None, "no conversion worker was killed"
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    assert ask(running.client, job.fine_tuned_model) == DEMO_FACT.answer
    messages = _messages(running, job.id)
    assert any(
        m.startswith(
            "The training process was killed (signal 9); retrying from the last checkpoint "
            "(attempt 2 of 3) in 5 s"
        )
        for m in messages
    ), messages
    assert any(
        m.startswith("The conversion worker was killed by signal 9; retrying (attempt 2 of 3)")
        for m in messages
    ), messages
    trainer_job = _trainer_job(running, _job_json(running, job.id)["forgeline"]["trainer_job_id"])
    assert trainer_job.attempt == 2, "resumed once, in the same trainer job"


def test_a_failed_conversion_keeps_the_training_and_a_retry_finishes_the_job(
    running: RunningStack, converter_attempts_once: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_fact_dataset(running.work / "fact-retried.jsonl")
    conversion = _Killer(lambda: _kill_a_conversion_worker(running))
    job = fine_tune(
        running.client,
        data,
        suffix="retried",
        on_event=lambda _: None,
        forgeline={"arguments": ARGUMENTS},
    )
    assert conversion.join() is not None, "no conversion worker was killed"
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.code == "worker_killed", job.error
    failed = _job_json(running, job.id)
    assert failed["forgeline"]["failed_stage"] == "converting"
    trained = [failed["forgeline"]["outputs"]["adapter"], failed["forgeline"]["outputs"]["merged"]]
    for reference, labels in _labels(running, trained).items():
        assert labels.get("fine_tuning_job_status") == "failed", reference
    trainer_jobs = _trainer_jobs(running)
    events_before = running.client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].id

    # The cause is gone: the converter is back to its default attempts.
    del running.stack.services["converter"].env[ATTEMPTS_SETTING]
    running.stack.restart("converter")
    code = forgeline(
        ["fine-tuning", "retry", job.id, "--follow", "--gateway", running.stack.gateway_url]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"job {job.id} running again, from the converting stage" in out
    assert "Retrying the job from the converting stage (retry 1)" in out

    retried = _job_json(running, job.id)
    assert retried["status"] == "succeeded"
    assert retried["error"] is None
    assert ask(running.client, retried["fine_tuned_model"]) == DEMO_FACT.answer
    outputs = retried["forgeline"]["outputs"]
    assert [outputs["adapter"], outputs["merged"]] == trained, "not trained again"
    assert _trainer_jobs(running) == trainer_jobs
    for reference, labels in _labels(running, trained).items():
        assert "fine_tuning_job_status" not in labels, reference
    newest = running.client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].id
    assert int(newest.rsplit("-", 1)[1]) > int(events_before.rsplit("-", 1)[1])
    assert forgeline(["fine-tuning", "show", job.id, "--gateway", running.stack.gateway_url]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{job.id}  succeeded"), shown
    assert "retries   1" in shown
    assert f"adapter   {trained[0]}" in shown

    again = httpx.post(
        f"{running.stack.gateway_url}/v1/fine_tuning/jobs/{job.id}/retry", timeout=30
    )
    assert again.status_code == 400
    assert again.json()["error"]["param"] == "fine_tuning_job_id"
    assert "only a failed job can be retried" in again.json()["error"]["message"]
