"""Fine-tuning jobs and their events, kept by the kit's operations layer in the gateway's
database (SQLite or PostgreSQL).

This module says only what is the pipeline's own: a job is stored as its ``JobRecord`` (JSON),
each event as its ``EventRecord``, and listings page by the last job id seen, as OpenAI's do.
Jobs kept in the earlier layout (``fine_tuning_jobs`` and ``fine_tuning_events``) are adopted
once at open (SQLite: no release kept them on PostgreSQL). A separate connection from the
key/deployment store: the tables share nothing but the database.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from forgeline_gateway.fine_tuning.records import TERMINAL, EventRecord, JobRecord
from forgeline_kit.databases import Database
from forgeline_kit.leases import LeasedStore, Leases
from forgeline_kit.operations import RecordInfo
from forgeline_kit.operations.databases import operation_store

__all__ = ["JobCodec", "JobStore"]


class JobCodec:
    """Fine-tuning jobs as the operations store keeps them."""

    kind = "fine_tuning_job"

    def describe(self, record: JobRecord) -> RecordInfo:
        return RecordInfo(
            id=record.id,
            request_id="",
            created=record.created_at,
            state=record.stage.value,
            terminal=record.stage in TERMINAL,
        )

    def dump_record(self, record: JobRecord) -> bytes:
        return record.model_dump_json().encode()

    def load_record(self, data: bytes) -> JobRecord:
        return JobRecord.model_validate_json(data)

    def dump_event(self, event: EventRecord) -> bytes:
        return event.model_dump_json().encode()

    def load_event(self, data: bytes) -> EventRecord:
        return EventRecord.model_validate_json(data)

    def event_kind(self, event: EventRecord) -> str:
        return event.type

    def number_event(self, event: EventRecord, sequence: int) -> EventRecord:
        return event.model_copy(update={"sequence": sequence})

    def number_record(self, record: JobRecord, sequence: int) -> None:
        """Job records do not carry their newest sequence."""


class JobStore(LeasedStore):
    """Jobs and events, the cancellations asked of whichever replica drives a job, and this
    replica's leases (`leases`, on a connection of their own); every call is short and runs on a
    worker thread through `run`."""

    # Jobs and events are the operations layer's tables, created by it.
    COMPONENT = "gateway_fine_tuning"
    SQLITE_SCHEMA = """
    CREATE TABLE IF NOT EXISTS fine_tuning_cancellations (
        job_id        TEXT PRIMARY KEY,
        requested_at  REAL NOT NULL
    );
    """
    POSTGRESQL_MIGRATIONS = (
        (
            1,
            """
            CREATE TABLE fine_tuning_cancellations (
                job_id        TEXT PRIMARY KEY,
                requested_at  DOUBLE PRECISION NOT NULL
            );
            """,
        ),
    )

    def __init__(self, database: Database, leases: Leases) -> None:
        super().__init__(database, leases)
        self.operations = operation_store(database, JobCodec())
        if not database.postgresql:
            self._adopt_earlier_layout()

    def request_cancel(self, job_id: str) -> None:
        """Ask whichever replica drives `job_id` to cancel it."""
        with self._lock:
            self._execute(
                "INSERT INTO fine_tuning_cancellations (job_id, requested_at) VALUES (?, ?) "
                "ON CONFLICT (job_id) DO NOTHING",
                (job_id, time.time()),
            )

    def cancellations(self) -> list[str]:
        """The jobs whose cancellation was asked for and not yet taken up."""
        with self._lock:
            rows = self._execute(
                "SELECT job_id FROM fine_tuning_cancellations ORDER BY requested_at"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def forget_cancellation(self, job_id: str) -> None:
        with self._lock:
            self._execute("DELETE FROM fine_tuning_cancellations WHERE job_id = ?", (job_id,))

    def put(self, job: JobRecord) -> None:
        """Store a new job, or the job as it is now."""
        if self.operations.head(job.id) is None:
            self.operations.create(job)
        else:
            self.operations.save(job)

    def get(self, job_id: str) -> JobRecord | None:
        return self.operations.get(job_id)

    def unfinished(self) -> list[JobRecord]:
        """Jobs not in a terminal stage, oldest first (the ones to resume at start)."""
        return self.operations.unfinished()

    def page(self, after: str | None, limit: int) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, starting after the job `after`; and whether more follow."""
        position = None
        if after:
            position = self.operations.position(after)
            if position is None:
                return [], False
        page = self.operations.page(after=position, limit=limit)
        return page.records, page.next_position is not None

    def add_event(
        self,
        job_id: str,
        level: Literal["info", "warn", "error"],
        message: str,
        *,
        kind: Literal["message", "metrics"] = "message",
        data: dict[str, Any] | None = None,
    ) -> EventRecord:
        """Append an event with the job's next sequence number."""
        event = EventRecord(
            job_id=job_id,
            sequence=0,
            created_at=int(time.time()),
            level=level,
            type=kind,
            message=message,
            data=data,
        )
        return self.operations.append(job_id, event)

    def events(self, job_id: str, before: int | None, limit: int) -> tuple[list[EventRecord], bool]:
        """Events newest first (OpenAI's order), those with a sequence below `before` when given;
        and whether more follow."""
        events = self.operations.events(job_id, after=before or 0, limit=limit + 1, descending=True)
        return events[:limit], len(events) > limit

    def _adopt_earlier_layout(self) -> None:
        tables = {
            row[0] for row in self._execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "fine_tuning_jobs" not in tables:
            return
        for (text,) in self._execute(
            "SELECT record FROM fine_tuning_jobs ORDER BY created_at, id"
        ).fetchall():
            job = JobRecord.model_validate_json(text)
            events = [
                EventRecord.model_validate_json(row[0])
                for row in self._execute(
                    "SELECT record FROM fine_tuning_events WHERE job_id = ? ORDER BY sequence",
                    (job.id,),
                )
            ]
            self.operations.adopt(job, events)
        self._execute("DROP TABLE fine_tuning_events")
        self._execute("DROP TABLE fine_tuning_jobs")
