"""SQLite persistence of jobs, their events and their checkpoints.

A job is stored as its serialised ``Job`` message plus the columns queries filter on; events
carry per-job sequence numbers assigned here, in the same transaction that records the job's
``last_event_sequence``, so a watcher that resumes after sequence N never misses or repeats one.
The LLaMA-Factory process group a job is running is recorded beside it (``run_processes``, not
in the ``Job`` message: the API has no business with host pids) while it runs.
One connection, used from the event loop's thread only (every call is short).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from forgeline_kit.errors import NotFound
from forgeline_kit.sqlite import open_database
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.process import GroupRecord

__all__ = ["JobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    state INTEGER NOT NULL,
    job BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
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

_KINDS = {
    "stage_change": pb.JOB_EVENT_KIND_STAGE_CHANGE,
    "metrics": pb.JOB_EVENT_KIND_METRICS,
    "log": pb.JOB_EVENT_KIND_LOG,
    "checkpoint": pb.JOB_EVENT_KIND_CHECKPOINT,
    "error": pb.JOB_EVENT_KIND_ERROR,
    "retry": pb.JOB_EVENT_KIND_RETRY,
}


def event_kind(event: pb.JobEvent) -> pb.JobEventKind.ValueType:
    """The kind of ``event``'s payload."""
    return _KINDS.get(event.WhichOneof("payload") or "", pb.JOB_EVENT_KIND_UNSPECIFIED)


class JobStore:
    """Jobs, events and checkpoints in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, _SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # --- jobs

    def create(self, job: pb.Job) -> pb.Job:
        """Store a new job; with a ``request_id`` already used, the job stored under it."""
        if job.request_id:
            existing = self.find_by_request(job.request_id)
            if existing is not None:
                return existing
        self._db.execute(
            "INSERT INTO jobs (id, request_id, state, job) VALUES (?, ?, ?, ?)",
            (job.id, job.request_id or None, job.state, job.SerializeToString()),
        )
        return job

    def find_by_request(self, request_id: str) -> pb.Job | None:
        """The job created with ``request_id``, if any."""
        query = "SELECT job FROM jobs WHERE request_id = ?"
        row = self._db.execute(query, (request_id,)).fetchone()
        return None if row is None else pb.Job.FromString(row[0])

    def get(self, job_id: str) -> pb.Job:
        """One job.

        Raises:
            NotFound: no such job.
        """
        row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job '{job_id}' does not exist", field="job_id")
        return pb.Job.FromString(row[0])

    def save(self, job: pb.Job) -> None:
        """Replace the stored job with ``job``."""
        self._db.execute(
            "UPDATE jobs SET state = ?, job = ? WHERE id = ?",
            (job.state, job.SerializeToString(), job.id),
        )

    def count_by_state(self) -> dict[pb.JobState.ValueType, int]:
        """How many jobs are in each state (states without jobs left out)."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {pb.JobState.ValueType(state): count for state, count in rows}

    def in_states(self, states: Iterable[pb.JobState.ValueType]) -> list[pb.Job]:
        """Jobs in any of ``states``, oldest first."""
        wanted = list(states)
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT job FROM jobs WHERE state IN ({marks}) ORDER BY seq",
            wanted,
        ).fetchall()
        return [pb.Job.FromString(row[0]) for row in rows]

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
        query = "SELECT seq, job FROM jobs WHERE seq < ?"
        params: list[object] = [before if before is not None else 1 << 62]
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            params += list(states)
        query += " ORDER BY seq DESC"
        jobs: list[pb.Job] = []
        last_seq = 0
        for seq, blob in self._db.execute(query, params):
            job = pb.Job.FromString(blob)
            if any(job.spec.metadata.get(key) != value for key, value in metadata.items()):
                continue
            if len(jobs) == limit:
                return jobs, last_seq
            jobs.append(job)
            last_seq = int(seq)
        return jobs, None

    # --- events

    def append_event(self, job: pb.Job, event: pb.JobEvent) -> pb.JobEvent:
        """Give ``event`` the next sequence of ``job``, store both in one transaction."""
        event.job_id = job.id
        event.sequence = job.last_event_sequence + 1
        job.last_event_sequence = event.sequence
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO events (job_id, sequence, kind, event) VALUES (?, ?, ?, ?)",
                (job.id, event.sequence, event_kind(event), event.SerializeToString()),
            )
            self._db.execute(
                "UPDATE jobs SET state = ?, job = ? WHERE id = ?",
                (job.state, job.SerializeToString(), job.id),
            )
        return event

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
        if descending:
            query = "SELECT event FROM events WHERE job_id = ? AND sequence < ?"
            params: list[object] = [job_id, after if after > 0 else 1 << 62]
        else:
            query = "SELECT event FROM events WHERE job_id = ? AND sequence > ?"
            params = [job_id, after]
        if kinds:
            query += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += list(kinds)
        query += f" ORDER BY sequence {'DESC' if descending else 'ASC'} LIMIT ?"
        params.append(limit)
        return [pb.JobEvent.FromString(row[0]) for row in self._db.execute(query, params)]

    # --- checkpoints

    def add_checkpoint(self, job_id: str, checkpoint: pb.Checkpoint, path: Path) -> bool:
        """Record a checkpoint; False when that step was already recorded."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO checkpoints (job_id, step, path, checkpoint) "
            "VALUES (?, ?, ?, ?)",
            (job_id, checkpoint.step, str(path), checkpoint.SerializeToString()),
        )
        return cursor.rowcount == 1

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
            "INSERT OR REPLACE INTO run_processes "
            "(job_id, tool, pgid, start_ticks, boot_id, hostname, pid_namespace) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            "r.pid_namespace FROM run_processes r LEFT JOIN jobs j ON j.id = r.job_id "
            "ORDER BY j.seq"
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
