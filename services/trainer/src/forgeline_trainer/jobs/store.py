"""Persistence of jobs, their events and their checkpoints.

Jobs and their events are kept by the kit's operations layer (``forgeline_kit.operations``):
each job is its serialised ``Job`` message, each event its ``JobEvent``, numbered in the same
transaction that records the job's ``last_event_sequence``, so a watcher that resumes after
sequence N never misses or repeats one. What is the trainer's own lives beside them in the same
file: the checkpoints of each job, and the LLaMA-Factory process group a job is running
(``run_processes``, not in the ``Job`` message: the API has no business with host pids).
Jobs kept in the earlier layout (``jobs`` and ``events`` tables) are adopted once at open.
One connection, used from the event loop's thread only (every call is short).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from forgeline_kit.databases import Database, apply_schema, connect
from forgeline_kit.errors import NotFound
from forgeline_kit.operations import RecordInfo
from forgeline_kit.operations.databases import operation_store
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.process import GroupRecord

__all__ = ["JobCodec", "JobStore"]

#: The trainer's own tables on SQLite (statements safe to run again).
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    checkpoint BLOB NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS run_processes (
    job_id TEXT NOT NULL PRIMARY KEY,
    tool TEXT NOT NULL,
    pgid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pid_namespace TEXT NOT NULL
);
"""

#: The same tables on PostgreSQL, as numbered migrations (a released one never changes).
_POSTGRESQL_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE checkpoints (
            job_id TEXT NOT NULL,
            step BIGINT NOT NULL,
            path TEXT NOT NULL,
            checkpoint BYTEA NOT NULL,
            PRIMARY KEY (job_id, step)
        );
        CREATE TABLE run_processes (
            job_id TEXT NOT NULL PRIMARY KEY,
            tool TEXT NOT NULL,
            pgid BIGINT NOT NULL,
            start_ticks BIGINT NOT NULL,
            boot_id TEXT NOT NULL,
            hostname TEXT NOT NULL,
            pid_namespace TEXT NOT NULL
        );
        """,
    ),
)

_KINDS = {
    "stage_change": pb.JOB_EVENT_KIND_STAGE_CHANGE,
    "metrics": pb.JOB_EVENT_KIND_METRICS,
    "log": pb.JOB_EVENT_KIND_LOG,
    "checkpoint": pb.JOB_EVENT_KIND_CHECKPOINT,
    "error": pb.JOB_EVENT_KIND_ERROR,
    "retry": pb.JOB_EVENT_KIND_RETRY,
}
_KIND_NAMES = {kind: name for name, kind in _KINDS.items()}
_TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})


def event_kind(event: pb.JobEvent) -> pb.JobEventKind.ValueType:
    """The kind of ``event``'s payload."""
    return _KINDS.get(event.WhichOneof("payload") or "", pb.JOB_EVENT_KIND_UNSPECIFIED)


def _state_name(state: pb.JobState.ValueType) -> str:
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


class JobCodec:
    """Training jobs as the operations store keeps them; a job's metadata are its labels."""

    kind = "training_job"

    def describe(self, record: pb.Job) -> RecordInfo:
        return RecordInfo(
            id=record.id,
            request_id=record.request_id,
            created=record.create_time.ToNanoseconds() / 1e9,
            state=_state_name(record.state),
            terminal=record.state in _TERMINAL,
            labels=dict(record.spec.metadata),
        )

    def dump_record(self, record: pb.Job) -> bytes:
        return record.SerializeToString()

    def load_record(self, data: bytes) -> pb.Job:
        return pb.Job.FromString(data)

    def dump_event(self, event: pb.JobEvent) -> bytes:
        return event.SerializeToString()

    def load_event(self, data: bytes) -> pb.JobEvent:
        return pb.JobEvent.FromString(data)

    def event_kind(self, event: pb.JobEvent) -> str:
        return event.WhichOneof("payload") or ""

    def number_event(self, event: pb.JobEvent, sequence: int) -> pb.JobEvent:
        event.sequence = sequence
        return event

    def number_record(self, record: pb.Job, sequence: int) -> None:
        record.last_event_sequence = sequence


class JobStore:
    """Jobs and events (the operations layer's), checkpoints and running processes (the
    trainer's own), in one SQLite file."""

    def __init__(self, database: Database) -> None:
        self._db = database
        apply_schema(database, "trainer", sqlite=_SQLITE_SCHEMA, postgresql=_POSTGRESQL_MIGRATIONS)
        self.operations = operation_store(database, JobCodec())
        if not database.postgresql:
            self._adopt_earlier_layout()

    @classmethod
    def open(cls, url: str) -> JobStore:
        """The store in the database at ``url`` (``sqlite:///...`` or ``postgresql://...``)."""
        return cls(connect(url))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _adopt_earlier_layout(self) -> None:
        tables = {
            row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "jobs" not in tables:
            return
        for (blob,) in self._db.execute("SELECT job FROM jobs ORDER BY seq").fetchall():
            job = pb.Job.FromString(blob)
            events = [
                pb.JobEvent.FromString(row[0])
                for row in self._db.execute(
                    "SELECT event FROM events WHERE job_id = ? ORDER BY sequence", (job.id,)
                )
            ]
            self.operations.adopt(job, events)
        self._db.execute("DROP TABLE events")
        self._db.execute("DROP TABLE jobs")

    # --- jobs

    def create(self, job: pb.Job) -> pb.Job:
        """Store a new job; with a ``request_id`` already used, the job stored under it."""
        stored, _ = self.operations.create(job)
        return stored

    def find_by_request(self, request_id: str) -> pb.Job | None:
        """The job created with ``request_id``, if any."""
        return self.operations.find_request(request_id)

    def get(self, job_id: str) -> pb.Job:
        """One job.

        Raises:
            NotFound: no such job.
        """
        job = self.operations.get(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' does not exist", field="job_id")
        return job

    def save(self, job: pb.Job) -> None:
        """Replace the stored job with ``job``."""
        self.operations.save(job)

    def count_by_state(self) -> dict[pb.JobState.ValueType, int]:
        """How many jobs are in each state (states without jobs left out)."""
        return {
            pb.JobState.Value(f"JOB_STATE_{name}"): count
            for name, count in self.operations.count_by_state().items()
        }

    def in_states(self, states: Iterable[pb.JobState.ValueType]) -> list[pb.Job]:
        """Jobs in any of ``states``, oldest first."""
        names = [_state_name(state) for state in states]
        jobs: list[pb.Job] = []
        position: int | None = None
        while True:
            page = self.operations.page(after=position, states=names, limit=500)
            jobs += page.records
            if page.next_position is None:
                return jobs[::-1]
            position = page.next_position

    def page(
        self,
        *,
        before: int | None,
        states: Sequence[pb.JobState.ValueType],
        metadata: dict[str, str],
        limit: int,
    ) -> tuple[list[pb.Job], int | None]:
        """Up to ``limit`` jobs, newest first, created before position ``before``; the position
        to continue from, or ``None`` when no more match."""
        page = self.operations.page(
            after=before,
            states=[_state_name(state) for state in states],
            labels=metadata,
            limit=limit,
        )
        return page.records, page.next_position

    # --- events

    def append_event(self, job: pb.Job, event: pb.JobEvent) -> pb.JobEvent:
        """Give ``event`` the next sequence of ``job``, store both in one transaction."""
        event.job_id = job.id
        return self.operations.record(job, event)

    def events(
        self,
        job_id: str,
        *,
        after: int,
        limit: int,
        descending: bool = False,
        kinds: Sequence[pb.JobEventKind.ValueType] = (),
    ) -> list[pb.JobEvent]:
        """Up to ``limit`` events of a job after sequence ``after`` in the listing order (for
        ``descending``, ``after`` 0 starts at the newest)."""
        return self.operations.events(
            job_id,
            after=after,
            limit=limit,
            descending=descending,
            kinds=[_KIND_NAMES[kind] for kind in kinds if kind in _KIND_NAMES],
        )

    # --- checkpoints

    def add_checkpoint(self, job_id: str, checkpoint: pb.Checkpoint, path: Path) -> bool:
        """Record a checkpoint; False when that step was already recorded."""
        cursor = self._db.execute(
            "INSERT INTO checkpoints (job_id, step, path, checkpoint) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job_id, step) DO NOTHING",
            (job_id, checkpoint.step, str(path), checkpoint.SerializeToString()),
        )
        return int(cursor.rowcount) == 1

    def set_checkpoint_version(
        self, job_id: str, step: int, version: common_pb2.VersionRef
    ) -> None:
        """Record the registered version of a checkpoint."""
        row = self._db.execute(
            "SELECT checkpoint FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step)
        ).fetchone()
        if row is None:
            return
        checkpoint = pb.Checkpoint.FromString(row[0])
        checkpoint.version.CopyFrom(version)
        self._db.execute(
            "UPDATE checkpoints SET checkpoint = ? WHERE job_id = ? AND step = ?",
            (checkpoint.SerializeToString(), job_id, step),
        )

    def checkpoints(
        self, job_id: str, *, before_step: int | None, limit: int
    ) -> list[tuple[pb.Checkpoint, Path]]:
        """A job's checkpoints with their directories, highest step first."""
        rows = self._db.execute(
            "SELECT checkpoint, path FROM checkpoints WHERE job_id = ? AND step < ? "
            "ORDER BY step DESC LIMIT ?",
            (job_id, before_step if before_step is not None else 1 << 62, limit),
        )
        return [(pb.Checkpoint.FromString(blob), Path(path)) for blob, path in rows]

    # --- running processes

    def record_run_process(self, job_id: str, tool: str, record: GroupRecord) -> None:
        """Record the process group running ``tool`` (``training``, ``merge``) for the job,
        replacing the one recorded before."""
        self._db.execute(
            "INSERT INTO run_processes "
            "(job_id, tool, pgid, start_ticks, boot_id, hostname, pid_namespace) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET tool = excluded.tool, "
            "pgid = excluded.pgid, start_ticks = excluded.start_ticks, "
            "boot_id = excluded.boot_id, hostname = excluded.hostname, "
            "pid_namespace = excluded.pid_namespace",
            (
                job_id,
                tool,
                record.pgid,
                record.start_ticks,
                record.boot_id,
                record.hostname,
                record.pid_namespace,
            ),
        )

    def clear_run_process(self, job_id: str) -> None:
        """The job's process group ended."""
        self._db.execute("DELETE FROM run_processes WHERE job_id = ?", (job_id,))

    def run_processes(self) -> list[tuple[str, str, GroupRecord]]:
        """Every recorded process group: job id, tool and record, oldest job first."""
        rows = self._db.execute(
            "SELECT r.job_id, r.tool, r.pgid, r.start_ticks, r.boot_id, r.hostname, "
            "r.pid_namespace FROM run_processes r LEFT JOIN operations o ON o.id = r.job_id "
            "ORDER BY o.seq"
        ).fetchall()
        return [
            (
                job_id,
                tool,
                GroupRecord(
                    pgid=int(pgid),
                    start_ticks=int(start),
                    boot_id=boot_id,
                    hostname=hostname,
                    pid_namespace=namespace,
                ),
            )
            for job_id, tool, pgid, start, boot_id, hostname, namespace in rows
        ]
