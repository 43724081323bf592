"""Which gateway replica drives which fine-tuning job: `JobDrivers`.

Every replica sharing a database sees every unfinished job, and each job must be driven by
exactly one of them at a time. A replica drives a job only while it holds the job's lease
(`forgeline_kit.leases`). Every `Leases.renew_every` seconds it renews the leases of the jobs it
drives (stopping any it lost: another replica took the job over), takes up the unfinished jobs
whose lease is free or has run out (a replica that died, or the previous run of this one), and
acts on cancellations other replicas asked for. A job whose driver dies is taken over within a
lease's length and resumed from its persisted stage, as a restarted gateway resumes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from forgeline_gateway.fine_tuning.store import JobStore

__all__ = ["JobDrivers"]

log = logging.getLogger(__name__)


def _lease(job_id: str) -> str:
    return f"fine_tuning_job:{job_id}"


class JobDrivers:
    """The jobs this replica drives, each a task under the job's lease."""

    def __init__(
        self,
        store: JobStore,
        drive: Callable[[str], Coroutine[Any, Any, None]],
        cancel: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        """
        Args:
            store: the jobs, with the leases of the replica (`JobStore.leases`).
            drive: drives one job until it ends (or its task is cancelled).
            cancel: cancels a job this replica drives, asked for by another replica.
        """
        self.store = store
        self.leases = store.leases
        self._drive = drive
        self._cancel = cancel
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._errands: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the unfinished jobs nobody drives, then keep the leases (in the background)."""
        await self.round()
        self._keeper = asyncio.create_task(self._keep(), name="fine-tuning leases")

    async def close(self) -> None:
        """Stop driving (the jobs go on under whichever replica takes them next) and give the
        leases up, so another replica need not wait for them to run out."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        tasks = [*self._tasks.values(), *self._errands]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def driving(self, job_id: str) -> asyncio.Task[None] | None:
        """The task driving `job_id` here, if this replica drives it."""
        return self._tasks.get(job_id)

    async def take(self, job_id: str) -> bool:
        """Whether this replica drives `job_id` or could take its lease now (nobody else holds
        it); the lease is then this replica's."""
        return job_id in self._tasks or await self._acquire(job_id)

    def spawn(self, job_id: str) -> asyncio.Task[None]:
        """Drive `job_id` in a task of its own; the caller holds its lease (`take`)."""
        task = asyncio.create_task(self._run(job_id), name=f"fine-tune {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(
            lambda done: self._tasks.pop(job_id) if self._tasks.get(job_id) is done else None
        )
        return task

    async def stop(self, job_id: str) -> None:
        """Stop driving `job_id` here (its lease stays this replica's)."""
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def round(self) -> None:
        """Renew, take over, and act on cancellations: one pass."""
        for job_id in list(self._tasks):
            if not await self._acquire(job_id):
                log.warning(
                    "another gateway took over the fine-tuning job; this one stops driving it",
                    extra={"job": job_id},
                )
                task = self._tasks.pop(job_id, None)
                if task is not None:
                    task.cancel()
        for job in await self.store.run(self.store.unfinished):
            if job.id not in self._tasks and await self._acquire(job.id):
                log.info("driving fine-tuning job", extra={"job": job.id, "stage": job.stage})
                self.spawn(job.id)
        for job_id in await self.store.run(self.store.cancellations):
            if job_id in self._tasks:
                await self.store.run(partial(self.store.forget_cancellation, job_id))
                errand = asyncio.create_task(self._cancel(job_id), name=f"cancel {job_id}")
                self._errands.add(errand)
                errand.add_done_callback(self._errands.discard)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.leases.renew_every)
            try:
                await self.round()
            except Exception:  # the database may be back on the next pass
                log.warning("could not renew the fine-tuning jobs' leases", exc_info=True)

    async def _run(self, job_id: str) -> None:
        try:
            await self._drive(job_id)
        finally:
            if self._tasks.get(job_id) is asyncio.current_task():
                # Ended or stopped here: nobody need wait for the lease to run out.
                await asyncio.shield(self.store.run(lambda: self.leases.release(_lease(job_id))))

    async def _acquire(self, job_id: str) -> bool:
        return await self.store.run(lambda: self.leases.acquire(_lease(job_id)))
