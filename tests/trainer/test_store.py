"""The trainer's store: jobs kept by an earlier release survive the upgrade to the operations
layer, with their events, their metadata filters and their running-process records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from postgres_server import PostgresServer

from forgeline_kit.sqlite import sqlite_url
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.jobs.store import JobStore
from forgeline_trainer.llamafactory.process import GroupRecord

#: The layout the trainer kept jobs in before the operations layer.
EARLIER_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, request_id TEXT UNIQUE,
    state INTEGER NOT NULL, job BLOB NOT NULL
);
CREATE TABLE events (
    job_id TEXT NOT NULL, sequence INTEGER NOT NULL, kind INTEGER NOT NULL,
    event BLOB NOT NULL, PRIMARY KEY (job_id, sequence)
);
"""


def _job(number: int, state: pb.JobState.ValueType, team: str) -> pb.Job:
    job = pb.Job(
        id=f"job-{number}",
        request_id=f"req-{number}",
        state=state,
        last_event_sequence=2,
        spec=pb.JobSpec(metadata={"team": team}),
    )
    job.create_time.FromSeconds(1_700_000_000 + number)
    return job


def test_jobs_kept_in_the_earlier_layout_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db = sqlite3.connect(path)
    db.executescript(EARLIER_SCHEMA)
    for number, state, team in (
        (1, pb.JOB_STATE_SUCCEEDED, "red"),
        (2, pb.JOB_STATE_TRAINING, "blue"),
    ):
        job = _job(number, state, team)
        db.execute(
            "INSERT INTO jobs (id, request_id, state, job) VALUES (?, ?, ?, ?)",
            (job.id, job.request_id, state, job.SerializeToString()),
        )
        for sequence in (1, 2):
            event = pb.JobEvent(job_id=job.id, sequence=sequence, message=f"event {sequence}")
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?)",
                (job.id, sequence, pb.JOB_EVENT_KIND_LOG, event.SerializeToString()),
            )
    db.commit()
    db.close()

    store = JobStore.open(sqlite_url(path))
    assert store.find_by_request("req-1") == _job(1, pb.JOB_STATE_SUCCEEDED, "red")
    assert [e.message for e in store.events("job-2", after=0, limit=10)] == ["event 1", "event 2"]
    jobs, position = store.page(before=None, states=[], metadata={"team": "blue"}, limit=10)
    assert [job.id for job in jobs] == ["job-2"]
    assert position is None
    assert [job.id for job in store.in_states([pb.JOB_STATE_TRAINING])] == ["job-2"]
    assert store.count_by_state() == {pb.JOB_STATE_SUCCEEDED: 1, pb.JOB_STATE_TRAINING: 1}
    running = store.get("job-2")
    store.append_event(running, pb.JobEvent(message="after the upgrade"))
    assert running.last_event_sequence == 3
    record = GroupRecord(pgid=10, start_ticks=1, boot_id="b", hostname="h", pid_namespace="pid:[1]")
    store.record_run_process("job-2", "training", record)
    assert store.run_processes() == [("job-2", "training", record)]
    store.close()

    reopened = JobStore.open(sqlite_url(path))
    assert len(reopened.events("job-2", after=0, limit=10)) == 3
    assert [job.id for job in reopened.in_states([pb.JOB_STATE_SUCCEEDED])] == ["job-1"]


def test_jobs_checkpoints_and_processes_keep_on_postgresql(postgres: PostgresServer) -> None:
    """FORGELINE_TRAINER_DATABASE_URL=postgresql://...: every table of the trainer lives there,
    and a trainer opening the database again (a restart, another host) finds it all."""
    url = postgres.create_database()
    store = JobStore.open(url)
    job = store.create(_job(1, pb.JOB_STATE_TRAINING, "red"))
    store.append_event(job, pb.JobEvent(message="training"))
    assert store.create(_job(1, pb.JOB_STATE_QUEUED, "blue")) == job  # the same request id
    checkpoint = pb.Checkpoint(step=4)
    assert store.add_checkpoint(job.id, checkpoint, Path("/work/checkpoint-4"))
    assert not store.add_checkpoint(job.id, checkpoint, Path("/work/checkpoint-4"))
    store.set_checkpoint_version(job.id, 4, common_pb2.VersionRef(model="m", version=2))
    first = GroupRecord(pgid=10, start_ticks=1, boot_id="b", hostname="h", pid_namespace="n")
    second = GroupRecord(pgid=11, start_ticks=2, boot_id="b", hostname="h", pid_namespace="n")
    store.record_run_process(job.id, "training", first)
    store.record_run_process(job.id, "merge", second)
    store.close()

    reopened = JobStore.open(url)
    assert [e.message for e in reopened.events(job.id, after=0, limit=10)] == ["training"]
    assert [j.id for j in reopened.in_states([pb.JOB_STATE_TRAINING])] == [job.id]
    [(kept, path)] = reopened.checkpoints(job.id, before_step=None, limit=10)
    assert (kept.step, kept.version.version, path) == (4, 2, Path("/work/checkpoint-4"))
    assert reopened.run_processes() == [(job.id, "merge", second)]
    reopened.clear_run_process(job.id)
    assert reopened.run_processes() == []
    reopened.close()
