"""Which gateway replica drives which fine-tuning job: `JobDrivers`.

Every replica sharing a database sees every unfinished job, and each job must be driven by
exactly one of them at a time: the one holding the job's lease (`forgeline_kit.leases`,
`LeasedTasks`: renewed every third of a lease, taken over once it runs out, so a job whose
replica dies is resumed by another from its persisted stage, as a restarted gateway resumes it).
Besides, each round acts on the cancellations other replicas asked for the jobs driven here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.leases import LeasedTasks

__all__ = ["JobDrivers"]


class JobDrivers(LeasedTasks):
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
        super().__init__(
            store.leases,
            "fine_tuning_job",
            run=drive,
            unfinished=self._unfinished_jobs,
            on_round=self._take_cancellations,
        )
        self.store = store
        self._cancel = cancel
        self._errands: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await super().close()
        errands = list(self._errands)
        for errand in errands:
            errand.cancel()
        await asyncio.gather(*errands, return_exceptions=True)

    def driving(self, job_id: str) -> asyncio.Task[None] | None:
        """The task driving `job_id` here, if this replica drives it."""
        return self.running(job_id)

    async def _unfinished_jobs(self) -> list[str]:
        return [job.id for job in await self.store.run(self.store.unfinished)]

    async def _take_cancellations(self) -> None:
        for job_id in await self.store.run(self.store.cancellations):
            if self.running(job_id) is not None:
                await self.store.run(partial(self.store.forget_cancellation, job_id))
                errand = asyncio.create_task(self._cancel(job_id), name=f"cancel {job_id}")
                self._errands.add(errand)
                errand.add_done_callback(self._errands.discard)
