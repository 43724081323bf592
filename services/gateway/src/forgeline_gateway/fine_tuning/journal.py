"""A fine-tuning job's record and its events in the `JobStore`, as every part of the pipeline
reads and writes them.

Each step saves the job before the next one starts: that is what lets a restarted gateway resume
a job at the step it had reached. One object for it, so the stages need the store for nothing
else.
"""

from __future__ import annotations

from typing import Any, Literal

from forgeline_gateway.fine_tuning.records import JobRecord
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.errors import NotFound

__all__ = ["JobJournal"]


class JobJournal:
    """Reads, saves and adds events to the fine-tuning jobs of one store."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def get(self, job_id: str) -> JobRecord:
        job = await self.store.run(lambda: self.store.get(job_id))
        if job is None:
            raise NotFound(f"there is no fine-tuning job '{job_id}'", field="fine_tuning_job_id")
        return job

    async def save(self, job: JobRecord, **update: Any) -> JobRecord:
        job = job.model_copy(update=update)
        await self.store.run(lambda: self.store.put(job))
        return job

    async def event(
        self,
        job: JobRecord,
        level: Literal["info", "warn", "error"],
        message: str,
        *,
        kind: Literal["message", "metrics"] = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        await self.store.run(
            lambda: self.store.add_event(job.id, level, message, kind=kind, data=data)
        )
