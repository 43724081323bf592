"""Where job changes happen: persisted through the store, then announced to watchers.

Every change of a job's state or progress goes through :class:`JobHub`, which stores the job
and its event together and wakes the streams watching that job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from forgeline_kit.operations import ChangeBell, watch_events
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.jobs.store import JobStore, event_kind
from forgeline_trainer.metrics import TrainerMetrics

__all__ = ["TERMINAL", "JobHub", "now"]

TERMINAL: Final = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})


def now() -> Timestamp:
    """The current time as a protobuf timestamp."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def state_name(state: pb.JobState.ValueType) -> str:
    """``TRAINING`` for ``JOB_STATE_TRAINING``."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


class JobHub:
    """Persists job changes, accounts for them in the metrics, and wakes the watchers of the
    job that changed."""

    def __init__(self, store: JobStore, metrics: TrainerMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._bell = ChangeBell()
        self._closed = False
        self._live: dict[str, pb.Job] = {}

    def load(self, job_id: str) -> pb.Job:
        """The job: the copy a running job works on, else the stored one.

        Raises:
            NotFound: no such job.
        """
        live = self._live.get(job_id)
        return live if live is not None else self.store.get(job_id)

    def attach(self, job: pb.Job) -> None:
        """Make ``job`` the one copy every change of that job goes through while it runs."""
        self._live[job.id] = job

    def detach(self, job_id: str) -> None:
        """The job stopped running."""
        self._live.pop(job_id, None)

    def emit(
        self,
        job: pb.Job,
        message: str,
        *,
        level: pb.EventLevel.ValueType = pb.EVENT_LEVEL_INFO,
        stage_change: pb.StageChange | None = None,
        metrics: pb.TrainingMetrics | None = None,
        log: common_pb2.LogLine | None = None,
        checkpoint: pb.Checkpoint | None = None,
        error: common_pb2.OperationError | None = None,
        retry: common_pb2.Retry | None = None,
    ) -> pb.JobEvent:
        """Record one event of ``job`` (and the job as it is now); without another payload, the
        message is the service's log line."""
        if not any((stage_change, metrics, log, checkpoint, error, retry)):
            log = common_pb2.LogLine(source=common_pb2.LOG_SOURCE_SERVICE, text=message[:8192])
        event = pb.JobEvent(
            time=now(),
            level=level,
            message=message,
            stage_change=stage_change,
            metrics=metrics,
            log=log,
            checkpoint=checkpoint,
            error=error,
            retry=retry,
        )
        job.update_time.CopyFrom(event.time)
        self.store.append_event(job, event)
        if self.metrics is not None:
            self.metrics.observe(job, event)
        self._bell.ring()
        return event

    def transition(self, job: pb.Job, state: pb.JobState.ValueType, message: str = "") -> None:
        """Move ``job`` to ``state`` with a stage-change event."""
        previous = job.state
        job.state = state
        if state in TERMINAL:
            job.end_time.CopyFrom(now())
            job.queue_position = 0
        level = pb.EVENT_LEVEL_ERROR if state == pb.JOB_STATE_FAILED else pb.EVENT_LEVEL_INFO
        self.emit(
            job,
            message or f"Job {state_name(state).lower()}",
            level=level,
            stage_change=pb.StageChange(previous_state=previous, state=state),
        )

    def fail(
        self, job: pb.Job, code: str, message: str, *, field: str = "", retryable: bool = False
    ) -> None:
        """End ``job`` FAILED with an OperationError (an error event, then the stage change)."""
        error = common_pb2.OperationError(
            code=code, message=message, field=field, retryable=retryable
        )
        job.error.CopyFrom(error)
        job.failed_state = job.state
        self.emit(job, f"Job failed ({code}): {message}", level=pb.EVENT_LEVEL_ERROR, error=error)
        self.transition(job, pb.JOB_STATE_FAILED, f"Job failed: {message.splitlines()[0]}")

    def save(self, job: pb.Job) -> None:
        """Persist ``job`` without an event (progress that watchers learn from events)."""
        job.update_time.CopyFrom(now())
        self.store.save(job)

    def close(self) -> None:
        """End every watch (the service is shutting down)."""
        self._closed = True
        self._bell.ring()

    async def watch(
        self, job_id: str, after: int, kinds: Sequence[pb.JobEventKind.ValueType]
    ) -> AsyncIterator[pb.JobEvent]:
        """The job's events after ``after``, then new ones as they happen, until the event that
        ends the job (or until the hub closes)."""
        self.store.get(job_id)  # NotFound before the stream starts
        wanted = set(kinds)
        async for event in watch_events(
            self.store.operations,
            self._bell,
            job_id,
            after=after,
            sequence_of=lambda event: event.sequence,
            closing=lambda: self._closed,
        ):
            if not wanted or event_kind(event) in wanted:
                yield event
