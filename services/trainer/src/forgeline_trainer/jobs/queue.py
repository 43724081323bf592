"""The job queue: jobs wait in order for one of ``max_concurrent`` slots and for the GPUs they
ask for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from forgeline_trainer.jobs.gpus import GpuPool

__all__ = ["JobQueue"]

Run = Callable[[str, tuple[str, ...]], Coroutine[Any, Any, None]]


def _asks_for_none(_: str) -> int:
    return 0


class JobQueue:
    """Starts ``run(job_id, gpus)`` for queued jobs, at most ``max_concurrent`` at once, each
    with GPUs of its own from ``gpus``: as many as the pool gives for the job's
    ``gpu_count(job_id)``.

    First come, first served: a job waiting for GPUs holds back the jobs behind it, so a job
    that needs every GPU is not passed over forever by smaller ones.
    """

    def __init__(
        self,
        run: Run,
        max_concurrent: int,
        gpus: GpuPool | None = None,
        gpu_count: Callable[[str], int] = _asks_for_none,
    ) -> None:
        self._run = run
        self._max = max_concurrent
        self._gpus = gpus or GpuPool(())
        self._gpu_count = gpu_count
        self._pending: list[str] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, tuple[str, ...]] = {}
        self._stopped = False

    def put(self, job_id: str, *, front: bool = False) -> None:
        """Queue a job (``front``: ahead of the others, for jobs resumed after a restart)."""
        if front:
            self._pending.insert(0, job_id)
        else:
            self._pending.append(job_id)
        self._pump()

    def position(self, job_id: str) -> int:
        """1 for the next job to start; 0 when the job is not waiting."""
        try:
            return self._pending.index(job_id) + 1
        except ValueError:
            return 0

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out of the queue; False when it was not waiting."""
        if job_id not in self._pending:
            return False
        self._pending.remove(job_id)
        return True

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job's task; False when it is not running."""
        task = self._running.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    def _pump(self) -> None:
        while not self._stopped and self._pending and len(self._running) < self._max:
            job_id = self._pending[0]
            gpus = self._gpus.take(self._gpus.demand(self._gpu_count(job_id)))
            if gpus is None:
                break  # it waits for running jobs to give GPUs back
            self._pending.pop(0)
            task = asyncio.get_running_loop().create_task(self._run(job_id, gpus), name=job_id)
            self._running[job_id] = task
            self._held[job_id] = gpus
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task.get_name(), None)
        self._gpus.give_back(self._held.pop(task.get_name(), ()))
        self._pump()

    async def stop(self) -> None:
        """Start nothing more and cancel the running jobs (each stops its processes and stays
        in its state, to be resumed by the next trainer)."""
        self._stopped = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
