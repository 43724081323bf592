"""A trainer started after one that died stops the LLaMA-Factory run the dead one left behind
(when the parent-death signal did not), and only that run: a pid given to another process since
is left alone."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgeline_kit.sqlite import sqlite_url
from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.jobs.store import JobStore
from forgeline_trainer.llamafactory.process import (
    GroupRecord,
    group_members,
    group_record,
    stop_stale_group,
)

from .service_helpers import Stack, dataset_input, struct

FACT = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}

# A stand-in for a LLaMA-Factory run that outlived its trainer: a leader with a helper of its
# own (as torchrun has workers), in a session of its own, and no parent-death signal.
ORPHAN = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def orphan() -> Iterator[subprocess.Popen[bytes]]:
    """The stand-in run, started as the trainer starts LLaMA-Factory (its own session), with
    its helper running; killed at the end whatever the test did."""
    process = subprocess.Popen(  # noqa: S603 - an argument list
        [sys.executable, "-c", ORPHAN], start_new_session=True
    )
    deadline = time.monotonic() + 30
    while len(group_members(process.pid)) < 2:
        assert time.monotonic() < deadline, "the stand-in's helper did not start"
        time.sleep(0.05)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def record_of(process: subprocess.Popen[bytes]) -> GroupRecord:
    record = group_record(process.pid)
    assert record is not None
    return record


def test_only_the_recorded_process_on_this_host_is_stopped(
    orphan: subprocess.Popen[bytes],
) -> None:
    record = record_of(orphan)
    for other in (
        dataclasses.replace(record, start_ticks=record.start_ticks + 1),
        dataclasses.replace(record, start_ticks=record.start_ticks - 1),
    ):
        assert stop_stale_group(other, grace_s=1).outcome == "reused"
    for other in (
        dataclasses.replace(record, boot_id="00000000-0000-0000-0000-000000000000"),
        dataclasses.replace(record, hostname=record.hostname + "-elsewhere"),
        dataclasses.replace(record, pid_namespace="pid:[1]"),
    ):
        assert stop_stale_group(other, grace_s=1).outcome == "elsewhere"
    assert orphan.poll() is None
    assert len(group_members(orphan.pid)) == 2

    stopped = stop_stale_group(record, grace_s=10)
    assert stopped.outcome == "stopped"
    assert len(stopped.members) == 2
    assert group_members(orphan.pid) == []
    assert orphan.wait(10) == -15  # SIGTERM was enough
    assert stop_stale_group(record).outcome == "gone"


def test_a_run_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = subprocess.Popen(  # noqa: S603 - an argument list
        [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "pathlib.Path(sys.argv[1]).touch()\n"
            "time.sleep(600)\n",
            str(ready),
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopped = stop_stale_group(record_of(stubborn), grace_s=0.5)
        assert stopped.outcome == "stopped"
        assert stopped.killed
        assert stubborn.wait(10) == -9
    finally:
        stubborn.kill()
        stubborn.wait()


@pytest.mark.timeout(300)
def test_a_recorded_pid_that_started_at_another_time_is_left_alone(
    orphan: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The record says the run's leader started at another time than the process that has its
    pid now: the trainer leaves that process alone (and forgets the record)."""
    state_dir = tmp_path / "trainer"
    store = JobStore.open(sqlite_url(state_dir / "jobs.db"))
    # A job the previous trainer was cancelling: recovery only has to end it.
    job = pb.Job(id="ftjob-recycled", state=pb.JOB_STATE_CANCELLING, last_event_sequence=0)
    store.create(job)
    record = record_of(orphan)
    store.record_run_process(
        job.id, "training", dataclasses.replace(record, start_ticks=record.start_ticks - 100)
    )
    store.close()

    stack = Stack(tmp_path)
    try:
        trainer = stack.start_trainer(state_dir)
        try:
            final = trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
            assert final.state == pb.JOB_STATE_CANCELLED
            request = pb.ListJobEventsRequest(job_id=job.id, page_size=1000)
            events = trainer.stub.ListJobEvents(request).events
            assert not [e for e in events if "left running" in e.message]
        finally:
            trainer.stop()
    finally:
        stack.close()
    assert orphan.poll() is None, "a process that only shares the recorded pid was signalled"
    assert len(group_members(orphan.pid)) == 2
    reopened = JobStore.open(sqlite_url(state_dir / "jobs.db"))
    assert reopened.run_processes() == []
    reopened.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_restarted_trainer_stops_the_run_left_behind_then_restarts_the_job(
    tiny_model: TinyModel, tmp_path: Path, orphan: subprocess.Popen[bytes]
) -> None:
    stack = Stack(tmp_path)
    try:
        base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
        facts = stack.push_dataset(tmp_path / "facts", "facts", [FACT] * 4)
        spec = pb.JobSpec(
            base_model=common_pb2.VersionRef(model=base.model, version=base.number),
            datasets=[dataset_input(facts)],
            stage=pb.STAGE_SFT,
            arguments=struct(
                {
                    "template": LLAMAFACTORY_TEMPLATE,
                    "per_device_train_batch_size": 2,
                    "max_steps": 2,
                    "save_steps": 100,
                }
            ),
            merge=pb.MergeOptions(skip=True),
        )
        state_dir = tmp_path / "trainer"
        first = stack.start_trainer(state_dir)
        job = first.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        first.wait_for(job.id, (pb.JOB_STATE_TRAINING,), timeout=300)
        deadline = time.monotonic() + 60
        while first.stub.GetJob(pb.GetJobRequest(job_id=job.id)).attempt < 1:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        first.stop()

        # The first trainer died with its run still training: its record names the run's
        # group, as the trainer writes it when LLaMA-Factory starts.
        store = JobStore.open(sqlite_url(state_dir / "jobs.db"))
        assert store.get(job.id).state == pb.JOB_STATE_TRAINING
        store.record_run_process(job.id, "training", record_of(orphan))
        store.close()

        second = stack.start_trainer(state_dir)
        try:
            # Stopped during start-up, before the job runs again.
            assert group_members(orphan.pid) == []
            assert orphan.wait(10) < 0
            events = list(second.watch(job.id, timeout=600))
            final = second.stub.GetJob(pb.GetJobRequest(job_id=job.id))
            assert final.state == pb.JOB_STATE_SUCCEEDED, final.error.message
            assert final.attempt == 2
            messages = [e.message for e in events]
            stopped = [i for i, m in enumerate(messages) if "left running" in m]
            assert len(stopped) == 1, messages
            assert f"process group {orphan.pid}" in messages[stopped[0]]
            assert events[stopped[0]].level == pb.EVENT_LEVEL_WARNING
            again = [i for i, m in enumerate(messages) if "training restarts" in m]
            assert len(again) == 1, messages
            assert again[0] > stopped[0], messages
            # The record goes once the job's own run ends.
            reopened = JobStore.open(sqlite_url(state_dir / "jobs.db"))
            assert reopened.run_processes() == []
            reopened.close()
        finally:
            second.stop()
    finally:
        stack.close()
