"""Fine-tuning jobs and their events in the gateway's SQLite file (the embedded default's one
owner of job state; at scale the same two tables move to PostgreSQL).

A separate connection from the key/deployment store: the tables share nothing but the file.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from forgeline_gateway.fine_tuning.records import TERMINAL, EventRecord, JobRecord
from forgeline_kit.sqlite import AsyncSqliteStore

__all__ = ["JobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fine_tuning_jobs (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    terminal    INTEGER NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fine_tuning_events (
    job_id      TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""


class JobStore(AsyncSqliteStore):
    """Jobs and events; every call is short and runs on a worker thread through `run`."""

    SCHEMA = _SCHEMA

    def put(self, job: JobRecord) -> None:
        """Insert or replace a job."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO fine_tuning_jobs (id, created_at, terminal, record) "
                "VALUES (?, ?, ?, ?)",
                (job.id, job.created_at, int(job.stage in TERMINAL), job.model_dump_json()),
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM fine_tuning_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    def unfinished(self) -> list[JobRecord]:
        """Jobs not in a terminal stage, oldest first (the ones to resume at start)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM fine_tuning_jobs WHERE terminal = 0 ORDER BY created_at, id"
            ).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def page(self, after: str | None, limit: int) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, starting after the job `after`; and whether more follow."""
        query = "SELECT record FROM fine_tuning_jobs"
        params: list[Any] = []
        if after:
            anchor = self.get(after)
            if anchor is None:
                return [], False
            query += " WHERE (created_at, id) < (?, ?)"
            params += [anchor.created_at, anchor.id]
        query += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        jobs = [JobRecord.model_validate_json(r[0]) for r in rows]
        return jobs[:limit], len(jobs) > limit

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
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(sequence), 0) FROM fine_tuning_events WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            event = EventRecord(
                job_id=job_id,
                sequence=int(row[0]) + 1,
                created_at=int(time.time()),
                level=level,
                type=kind,
                message=message,
                data=data,
            )
            self._db.execute(
                "INSERT INTO fine_tuning_events (job_id, sequence, record) VALUES (?, ?, ?)",
                (job_id, event.sequence, event.model_dump_json()),
            )
        return event

    def events(self, job_id: str, before: int | None, limit: int) -> tuple[list[EventRecord], bool]:
        """Events newest first (OpenAI's order), those with a sequence below `before` when given;
        and whether more follow."""
        query = "SELECT record FROM fine_tuning_events WHERE job_id = ?"
        params: list[Any] = [job_id]
        if before is not None:
            query += " AND sequence < ?"
            params.append(before)
        query += " ORDER BY sequence DESC LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        events = [EventRecord.model_validate_json(r[0]) for r in rows]
        return events[:limit], len(events) > limit
