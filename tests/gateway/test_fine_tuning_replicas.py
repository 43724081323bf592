"""Gateway replicas sharing one database: each fine-tuning job is driven by exactly one of them
(its lease), a replica that dies has its jobs taken over by another within a lease's length, and
a job can be cancelled from any replica. Pipelines on the shared store with stand-ins for the
other services (a job that waits on its training file forever); make test-postgres runs it on
PostgreSQL, the case replicas are for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from database_urls import database_url

from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.plan import DatasetFile
from forgeline_gateway.fine_tuning.records import JobRecord, JobRequest, Stage
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.errors import NotFound

LEASE_SECONDS = 0.6
JOB_ID = "ftjob-0123456789abcdef01234567"


class _Files:
    """Training files that never arrive; says which replica asked, and when."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []
        self.asking = asyncio.Event()

    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        self.asked.append((file_id, time.monotonic()))
        self.asking.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class _NoDeployments:
    """No job got as far as deploying: there is nothing to remove."""

    async def delete(self, name: str) -> None:
        raise NotFound(f"there is no deployment named '{name}'")


class Replica:
    def __init__(self, url: str, name: str) -> None:
        self.store = JobStore.open(url, holder=name, lease_seconds=LEASE_SECONDS)
        self.files = _Files()
        self.pipeline = Pipeline(
            self.store,
            trainer=cast(Any, None),
            converter=cast(Any, None),
            registry=cast(Any, None),
            files=self.files,
            deployments=cast(Any, _NoDeployments()),
            organization="forgeline",
            cancel_wait_seconds=10,
        )

    async def die(self) -> None:
        """Stop as a killed process does: driving ends, the leases stay until they run out."""
        self.store.leases.release = lambda name: None  # type: ignore[method-assign]
        await self.pipeline.close()

    async def close(self) -> None:
        await self.pipeline.close()
        self.store.close()


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    url = database_url(tmp_path / "gateway.sqlite3")
    a, b = Replica(url, "replica-a"), Replica(url, "replica-b")
    a.store.put(
        JobRecord(
            id=JOB_ID,
            created_at=1,
            owner="forgeline",
            request=JobRequest(model="tiny-llama", training_file="file-1"),
            fine_tuned_model="ft:tiny-llama:forgeline::01234567",
            seed=1,
            base_version="tiny-llama:1",
        )
    )
    yield a, b
    await a.close()
    await b.close()


async def _rounds(count: int) -> None:
    await asyncio.sleep(count * LEASE_SECONDS / 3)


async def test_one_replica_drives_a_job_and_another_takes_it_over_when_it_dies(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.pipeline.start()
    await asyncio.wait_for(a.files.asking.wait(), 10)
    await b.pipeline.start()
    await _rounds(4)

    assert a.pipeline.drivers.driving(JOB_ID) is not None
    assert b.pipeline.drivers.driving(JOB_ID) is None
    assert b.files.asked == []  # never driven twice at once

    await a.die()
    died = time.monotonic()
    await asyncio.wait_for(b.files.asking.wait(), 10)

    taken_over_after = b.files.asked[0][1] - died
    # Once the lease ran out, at the next round of b's (every third of a lease).
    assert LEASE_SECONDS * 0.5 < taken_over_after < LEASE_SECONDS * 2 + 1
    assert b.pipeline.drivers.driving(JOB_ID) is not None
    assert len(a.files.asked) == 1


async def test_a_replica_that_stops_hands_its_jobs_over_at_once(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.pipeline.start()
    await asyncio.wait_for(a.files.asking.wait(), 10)
    await b.pipeline.start()

    await a.pipeline.close()  # a graceful stop gives the leases up
    stopped = time.monotonic()
    await asyncio.wait_for(b.files.asking.wait(), 10)

    assert b.files.asked[0][1] - stopped < LEASE_SECONDS / 3 + 0.5


async def test_a_job_driven_by_one_replica_is_cancelled_from_another(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.pipeline.start()
    await asyncio.wait_for(a.files.asking.wait(), 10)
    await b.pipeline.start()

    job = await b.pipeline.cancel(JOB_ID)

    assert (job.stage, job.status) == (Stage.CANCELLED, "cancelled")
    assert a.pipeline.drivers.driving(JOB_ID) is None
    assert b.files.asked == []
    assert await a.store.run(a.store.cancellations) == []
