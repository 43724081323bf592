"""The pipeline's own retries and the retry of a failed job, on its SQLite store with stand-ins
for the trainer (the end-to-end cases run in tests/pipeline/test_resilience.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from database_urls import database_url

from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.plan import DatasetFile
from forgeline_gateway.fine_tuning.records import JobRecord, JobRequest, Outputs, Stage
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.errors import FailedPrecondition, Unavailable
from forgeline_kit.sqlite import sqlite_url


class _TrainerDown:
    """A trainer that cannot be reached."""

    def __init__(self) -> None:
        self.watches = 0

    def WatchJob(self, request: Any) -> AsyncIterator[Any]:  # noqa: N802 (the stub's name)
        self.watches += 1
        return self._cut()

    async def _cut(self) -> AsyncIterator[Any]:
        for _ in ():
            yield _  # an async generator that ends before its first item, with:
        raise Unavailable("failed to connect to all addresses")

    async def CancelJob(self, request: Any, **options: Any) -> Any:  # noqa: N802
        raise Unavailable("failed to connect to all addresses")


class _FilesNeverAnswer:
    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    opened = JobStore.open(database_url(tmp_path / "gateway.sqlite3"))
    yield opened
    opened.close()


def _pipeline(store: JobStore, trainer: Any = None) -> Pipeline:
    return Pipeline(
        store,
        trainer=cast(Any, trainer),
        converter=cast(Any, None),
        registry=cast(Any, None),
        files=_FilesNeverAnswer(),
        deployments=cast(Any, None),
        organization="forgeline",
        attempts=3,
        retry_seconds=0.0,
    )


def _job(**fields: Any) -> JobRecord:
    return JobRecord(
        id="ftjob-0123456789abcdef01234567",
        created_at=1,
        owner="forgeline",
        request=JobRequest(model="tiny-llama", training_file="file-1"),
        fine_tuned_model="ft:tiny-llama:forgeline::01234567",
        seed=1,
        base_version="tiny-llama:1",
        **fields,
    )


def _messages(store: JobStore, job_id: str) -> list[str]:
    events, _ = store.events(job_id, None, 100)
    return [event.message for event in reversed(events)]


async def test_a_trainer_out_of_reach_fails_the_job_after_the_attempts(store: JobStore) -> None:
    trainer = _TrainerDown()
    store.put(_job(stage=Stage.TRAINING, trainer_job_id="job-1", trainer_state="TRAINING"))
    pipeline = _pipeline(store, trainer)

    await pipeline._drive_with_retries("ftjob-0123456789abcdef01234567")

    job = await pipeline.get("ftjob-0123456789abcdef01234567")
    assert trainer.watches == 3
    assert job.stage is Stage.FAILED
    assert job.failed_stage is Stage.TRAINING
    assert job.error is not None
    assert job.error.code == "service_unavailable"
    assert "/retry" in job.error.message
    messages = _messages(store, job.id)
    assert [m for m in messages if "retrying" in m] == [
        "The training stage was interrupted: failed to connect to all addresses; retrying "
        "(attempt 2 of 3) in 0 s",
        "The training stage was interrupted: failed to connect to all addresses; retrying "
        "(attempt 3 of 3) in 0 s",
    ]


async def test_a_record_stored_before_retries_loads_and_retries_from_the_start(
    tmp_path: Path,
) -> None:
    """A job written by a release before retries existed, in the layout that release kept
    (its own ``fine_tuning_jobs`` table, adopted by the operations layer at open)."""
    record = json.loads(_job(stage=Stage.FAILED, trainer_job_id="job-1").model_dump_json())
    for added in ("failed_stage", "retries", "conversion_sequences"):
        del record[added]
    record["outputs"] = {"adapter": "tiny-llama-ft:1", "merged": "tiny-llama-ft:2"}
    path = tmp_path / "earlier.sqlite3"
    earlier = sqlite3.connect(path)
    earlier.executescript(
        "CREATE TABLE fine_tuning_jobs (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, "
        "terminal INTEGER NOT NULL, record TEXT NOT NULL); "
        "CREATE TABLE fine_tuning_events (job_id TEXT NOT NULL, sequence INTEGER NOT NULL, "
        "record TEXT NOT NULL, PRIMARY KEY (job_id, sequence));"
    )
    earlier.execute(
        "INSERT INTO fine_tuning_jobs VALUES (?, 1, 1, ?)", (record["id"], json.dumps(record))
    )
    earlier.commit()
    earlier.close()
    store = JobStore.open(sqlite_url(path))  # the earlier layout was SQLite's
    pipeline = _pipeline(store)

    job = await pipeline.retry(record["id"])
    await pipeline.close()
    store.close()

    assert job.stage is Stage.VALIDATING_FILES
    assert job.outputs == Outputs(), "deleted when it failed: made again"
    assert (job.retries, job.trainer_job_id) == (1, "")
    assert job.request_id() == f"{job.id}-retry-1"
    assert job.status == "validating_files"


async def test_a_job_that_failed_converting_goes_back_to_converting(store: JobStore) -> None:
    outputs = Outputs(adapter="tiny-llama-ft:1", merged="tiny-llama-ft:2")
    store.put(
        _job(
            stage=Stage.FAILED,
            failed_stage=Stage.CONVERTING,
            trainer_job_id="job-1",
            trainer_state="SUCCEEDED",
            outputs=outputs,
            finished_at=2,
        )
    )
    pipeline = _pipeline(store)
    pipeline.drivers.spawn = lambda job_id: None  # type: ignore[method-assign, assignment, return-value]

    job = await pipeline.retry("ftjob-0123456789abcdef01234567")

    assert (job.stage, job.status, job.outputs, job.trainer_job_id) == (
        Stage.CONVERTING,
        "running",
        outputs,
        "job-1",
    )
    assert (job.failed_stage, job.finished_at, job.error) == (None, None, None)
    assert job.request_id("gguf") == f"{job.id}-gguf-retry-1"
    assert _messages(store, job.id)[-1].startswith("Retrying the job from the converting stage")
    with pytest.raises(FailedPrecondition, match="only a failed job can be retried"):
        await pipeline.retry(job.id)


async def test_a_job_that_failed_training_trains_in_a_new_trainer_job(store: JobStore) -> None:
    store.put(
        _job(
            stage=Stage.FAILED,
            failed_stage=Stage.TRAINING,
            trainer_job_id="job-1",
            trainer_state="FAILED",
            trainer_last_sequence=40,
        )
    )
    pipeline = _pipeline(store)
    pipeline.drivers.spawn = lambda job_id: None  # type: ignore[method-assign, assignment, return-value]

    job = await pipeline.retry("ftjob-0123456789abcdef01234567")

    assert job.stage is Stage.VALIDATING_FILES
    assert (job.trainer_job_id, job.trainer_state, job.trainer_last_sequence) == ("", "", 0)
    assert job.request_id() == f"{job.id}-retry-1"
