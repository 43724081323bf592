"""The trainer's Prometheus metrics, fed by the job hub's events.

Every job change goes through :class:`~forgeline_trainer.jobs.hub.JobHub`, which hands each event
to :meth:`TrainerMetrics.observe`; the metrics are therefore what watchers see, never a second
bookkeeping. ``/metrics`` is scraped from the metrics server's thread, so the live figures are
kept behind a lock and read as a snapshot (the job store's SQLite connection belongs to the event
loop's thread and is only read at start).

- ``forgeline_trainer_jobs{state}``: jobs per state, every state listed (zeros included). Counted
  from the store at start, then moved with each stage change, so it is right after a restart.
- ``forgeline_trainer_train_loss{job_id}`` / ``forgeline_trainer_tokens_per_second{job_id}``: the
  last figures of jobs that are running. A job's series are removed when it ends: their number
  stays bounded by the running jobs (``MAX_CONCURRENT_JOBS``), however many jobs the trainer ran;
  the final loss stays in the job (``result.metrics``) and on the registered version.
- ``forgeline_trainer_job_duration_seconds{stage, outcome}``: time spent in each stage (``queued``,
  ``validating``, ``training``, ``exporting``, ``registering``; outcome ``completed``, ``failed``
  or ``cancelled``), and ``stage="total"`` from creation to the end (outcome ``succeeded``,
  ``failed``, ``cancelled``). A stage a restarted trainer took over mid-way is not observed (its
  start lies in the previous process).
- ``forgeline_trainer_tool_seconds{tool}``: run time of successful ``llamafactory-cli train`` and
  ``export`` processes (``tool`` = ``train`` | ``export``), the figures the job's
  ``result.metrics`` report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forgeline_proto.trainer.v1 import trainer_pb2 as pb

__all__ = ["TrainerMetrics"]

_TERMINAL: Final = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
#: Job states as label values: ``queued``, ``training``, ... (UNSPECIFIED is no state).
_STATES: Final = {
    value: name.removeprefix("JOB_STATE_").lower()
    for name, value in pb.JobState.items()
    if value != pb.JOB_STATE_UNSPECIFIED
}
#: Stages last from seconds (validation of a tiny set) to days (a large training run).
_DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_TOOL_METRICS: Final = {
    pb.JOB_STATE_TRAINING: ("train", "train_process_seconds"),
    pb.JOB_STATE_EXPORTING: ("export", "export_process_seconds"),
}


_Counts = dict[pb.JobState.ValueType, int]


def _outcome(state: pb.JobState.ValueType) -> str:
    """How a stage ended, from the state the job moved to."""
    if state == pb.JOB_STATE_FAILED:
        return "failed"
    if state in (pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED):
        return "cancelled"
    return "completed"


class _LiveCollector(Collector):
    """Yields the gauges read from :class:`TrainerMetrics`' snapshot at each scrape."""

    def __init__(self, metrics: TrainerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        counts, loss, speed = self._metrics.snapshot()
        jobs = GaugeMetricFamily(
            "forgeline_trainer_jobs", "Fine-tuning jobs per state.", labels=["state"]
        )
        for state, name in _STATES.items():
            jobs.add_metric([name], counts.get(state, 0))
        yield jobs
        losses = GaugeMetricFamily(
            "forgeline_trainer_train_loss",
            "Last training loss of each running job.",
            labels=["job_id"],
        )
        for job_id, value in sorted(loss.items()):
            losses.add_metric([job_id], value)
        yield losses
        speeds = GaugeMetricFamily(
            "forgeline_trainer_tokens_per_second",
            "Last training throughput (tokens per second) of each running job.",
            labels=["job_id"],
        )
        for job_id, value in sorted(speed.items()):
            speeds.add_metric([job_id], value)
        yield speeds


class TrainerMetrics:
    """The trainer's metric families, registered in ``collectors``.

    Args:
        collectors: where ``/metrics`` reads them.
        counts: jobs per state when the trainer starts (from the store).
    """

    def __init__(
        self, collectors: CollectorRegistry, counts: Mapping[pb.JobState.ValueType, int]
    ) -> None:
        self._lock = threading.Lock()
        self._counts: dict[pb.JobState.ValueType, int] = dict(counts)
        self._loss: dict[str, float] = {}
        self._speed: dict[str, float] = {}
        #: job id -> (state, monotonic time it was entered in this process)
        self._entered: dict[str, tuple[pb.JobState.ValueType, float]] = {}
        self.job_duration = Histogram(
            "forgeline_trainer_job_duration_seconds",
            "Time fine-tuning jobs spent per stage (stage=total: creation to end).",
            ["stage", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=collectors,
        )
        self.tool_seconds = Histogram(
            "forgeline_trainer_tool_seconds",
            "Run time of successful llamafactory-cli processes.",
            ["tool"],
            buckets=_DURATION_BUCKETS,
            registry=collectors,
        )
        collectors.register(_LiveCollector(self))

    def snapshot(self) -> tuple[_Counts, dict[str, float], dict[str, float]]:
        """Jobs per state, last loss and last tokens/s by job, as of now (copies)."""
        with self._lock:
            return dict(self._counts), dict(self._loss), dict(self._speed)

    def observe(self, job: pb.Job, event: pb.JobEvent) -> None:
        """Account for ``event``, just recorded for ``job``."""
        if event.HasField("metrics"):
            self._progress(job.id, event.metrics)
        if event.HasField("stage_change"):
            self._stage_change(job, event.stage_change)

    def _progress(self, job_id: str, metrics: pb.TrainingMetrics) -> None:
        with self._lock:
            if metrics.HasField("loss"):
                self._loss[job_id] = metrics.loss
            if metrics.HasField("tokens_per_second"):
                self._speed[job_id] = metrics.tokens_per_second

    def _stage_change(self, job: pb.Job, change: pb.StageChange) -> None:
        moment = time.monotonic()
        with self._lock:
            if change.previous_state != pb.JOB_STATE_UNSPECIFIED:
                left = self._counts.get(change.previous_state, 0)
                self._counts[change.previous_state] = max(left - 1, 0)
            self._counts[change.state] = self._counts.get(change.state, 0) + 1
            entered = self._entered.pop(job.id, None)
            if change.state in _TERMINAL:
                self._loss.pop(job.id, None)
                self._speed.pop(job.id, None)
            else:
                self._entered[job.id] = (change.state, moment)
        if entered is not None and entered[0] == change.previous_state:
            stage = _STATES[change.previous_state]
            self.job_duration.labels(stage, _outcome(change.state)).observe(moment - entered[1])
        tool = _TOOL_METRICS.get(change.previous_state)
        if tool is not None and _outcome(change.state) == "completed":
            seconds = job.result.metrics.get(tool[1])
            if seconds is not None:
                self.tool_seconds.labels(tool[0]).observe(seconds)
        if change.state in _TERMINAL and job.HasField("create_time"):
            total = job.end_time.ToNanoseconds() - job.create_time.ToNanoseconds()
            self.job_duration.labels("total", _STATES[change.state]).observe(max(total, 0) / 1e9)
