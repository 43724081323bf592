"""The job queue: jobs wait in order for one of ``max_concurrent`` slots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["JobQueue"]


class JobQueue:
    """Starts ``run(job_id)`` for queued jobs, at most ``max_concurrent`` at once."""

    def __init__(
        self, run: Callable[[str], Coroutine[Any, Any, None]], max_concurrent: int
    ) -> None:
        self._run = run
        self._max = max_concurrent
        self._pending: list[str] = []
        self._running: dict[str, asyncio.Task[None]] = {}
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
            job_id = self._pending.pop(0)
            task = asyncio.get_running_loop().create_task(self._run(job_id), name=job_id)
            self._running[job_id] = task
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task.get_name(), None)
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
