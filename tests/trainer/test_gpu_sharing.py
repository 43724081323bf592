"""A trainer's GPUs are shared out between concurrent jobs: each job gets GPUs no other running
job holds, a job waits in the queue while too few are free, and the GPUs come back when it ends.

The queue runs real asyncio tasks; the jobs are stand-ins that run until the test lets them end
(no GPU is needed to decide who gets which).
"""

from __future__ import annotations

import asyncio

import pytest

from forgeline_trainer.jobs.gpus import GpuPool
from forgeline_trainer.jobs.queue import JobQueue


def test_the_pool_names_gpus_as_the_operator_does() -> None:
    assert GpuPool.visible({"CUDA_VISIBLE_DEVICES": "4,5,GPU-abc"}, 3).devices == (
        "4",
        "5",
        "GPU-abc",
    )
    assert GpuPool.visible({}, 2).devices == ("0", "1")
    assert GpuPool.visible({"CUDA_VISIBLE_DEVICES": "3"}, 0).devices == ()


def test_a_count_of_zero_takes_every_gpu_and_too_many_takes_them_all() -> None:
    pool = GpuPool(["0", "1", "2"])
    assert pool.demand(0) == 3
    assert pool.demand(2) == 2
    assert pool.demand(8) == 3
    assert GpuPool(()).demand(0) == 0


class Jobs:
    """Stand-in jobs: each records the GPUs it was given and runs until released."""

    def __init__(self, wants: dict[str, int]) -> None:
        self.wants = wants
        self.gpus: dict[str, tuple[str, ...]] = {}
        self.release: dict[str, asyncio.Event] = {name: asyncio.Event() for name in wants}

    async def run(self, job_id: str, gpus: tuple[str, ...]) -> None:
        self.gpus[job_id] = gpus
        await self.release[job_id].wait()

    async def finish(self, job_id: str) -> None:
        self.release[job_id].set()
        for _ in range(5):  # let the task end and the queue start the next ones
            await asyncio.sleep(0)


async def test_concurrent_jobs_get_gpus_of_their_own() -> None:
    jobs = Jobs({"a": 1, "b": 2, "c": 1})
    pool = GpuPool(["0", "1", "2", "3"])
    queue = JobQueue(jobs.run, max_concurrent=4, gpus=pool, gpu_count=jobs.wants.__getitem__)
    for name in jobs.wants:
        queue.put(name)
    await asyncio.sleep(0)

    assert jobs.gpus == {"a": ("0",), "b": ("1", "2"), "c": ("3",)}
    assert pool.free() == 0
    for name in jobs.wants:
        await jobs.finish(name)
    assert pool.free() == 4
    await queue.stop()


async def test_a_job_waits_for_gpus_and_keeps_its_place_in_the_queue() -> None:
    jobs = Jobs({"one": 1, "all": 0, "small": 1})
    pool = GpuPool(["0", "1"])
    queue = JobQueue(jobs.run, max_concurrent=4, gpus=pool, gpu_count=jobs.wants.__getitem__)
    for name in jobs.wants:
        queue.put(name)
    await asyncio.sleep(0)

    # "all" needs both GPUs and waits; "small" could fit beside "one" but queued after "all".
    assert set(jobs.gpus) == {"one"}
    assert queue.position("all") == 1
    assert queue.position("small") == 2

    await jobs.finish("one")
    assert jobs.gpus["all"] == ("0", "1")
    assert "small" not in jobs.gpus

    await jobs.finish("all")
    assert jobs.gpus["small"] == ("0",)
    await jobs.finish("small")
    assert pool.free() == 2
    await queue.stop()


async def test_gpus_come_back_when_a_job_fails_or_is_cancelled() -> None:
    pool = GpuPool(["0"])
    started: list[str] = []

    async def run(job_id: str, gpus: tuple[str, ...]) -> None:
        started.append(job_id)
        if job_id == "broken":
            raise RuntimeError("the job's own failure")
        await asyncio.Event().wait()

    queue = JobQueue(run, max_concurrent=2, gpus=pool, gpu_count=lambda _: 1)
    queue.put("broken")
    queue.put("long")
    queue.put("after")
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == ["broken", "long"]

    assert queue.cancel("long")
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == ["broken", "long", "after"]
    await queue.stop()
    assert pool.free() == 1


@pytest.mark.parametrize("max_concurrent", [1, 3])
async def test_a_cpu_trainer_runs_jobs_up_to_its_slots_with_no_gpus(max_concurrent: int) -> None:
    jobs = Jobs({"a": 0, "b": 0, "c": 0})
    queue = JobQueue(jobs.run, max_concurrent=max_concurrent)
    for name in jobs.wants:
        queue.put(name)
    await asyncio.sleep(0)

    assert len(jobs.gpus) == max_concurrent
    assert set(jobs.gpus.values()) == {()}
    for name in list(jobs.wants):
        await jobs.finish(name)
    assert len(jobs.gpus) == 3
    await queue.stop()
