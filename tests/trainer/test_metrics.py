"""The trainer's metrics follow the hub's events: failed and cancelled jobs, bounded series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.jobs.hub import now
from forgeline_trainer.metrics import TrainerMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collectors: CollectorRegistry) -> Samples:
    text = generate_latest(collectors).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def move(metrics: TrainerMetrics, job: pb.Job, state: pb.JobState.ValueType) -> None:
    change = pb.StageChange(previous_state=job.state, state=state)
    job.state = state
    if state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        job.end_time.CopyFrom(now())
    metrics.observe(job, pb.JobEvent(stage_change=change))


def loss(metrics: TrainerMetrics, job: pb.Job, value: float) -> None:
    metrics.observe(
        job, pb.JobEvent(metrics=pb.TrainingMetrics(step=1, loss=value, tokens_per_second=9.0))
    )


def test_counts_start_from_the_store_and_follow_stage_changes() -> None:
    collectors = CollectorRegistry()
    metrics = TrainerMetrics(collectors, {pb.JOB_STATE_SUCCEEDED: 3, pb.JOB_STATE_TRAINING: 1})
    job = pb.Job(id="a", create_time=now())
    move(metrics, job, pb.JOB_STATE_QUEUED)

    found = scrape(collectors)

    assert found[("forgeline_trainer_jobs", frozenset({("state", "succeeded")}))] == 3
    assert found[("forgeline_trainer_jobs", frozenset({("state", "training")}))] == 1
    assert found[("forgeline_trainer_jobs", frozenset({("state", "queued")}))] == 1
    assert found[("forgeline_trainer_jobs", frozenset({("state", "cancelled")}))] == 0


def test_a_failed_and_a_cancelled_job_end_their_series_and_count_their_outcome() -> None:
    collectors = CollectorRegistry()
    metrics = TrainerMetrics(collectors, {})
    failing, cancelled = pb.Job(id="f", create_time=now()), pb.Job(id="c", create_time=now())
    for job in (failing, cancelled):
        for state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_VALIDATING, pb.JOB_STATE_TRAINING):
            move(metrics, job, state)
        loss(metrics, job, 2.5)
    running = scrape(collectors)
    assert running[("forgeline_trainer_train_loss", frozenset({("job_id", "f")}))] == 2.5
    assert running[("forgeline_trainer_tokens_per_second", frozenset({("job_id", "c")}))] == 9

    move(metrics, failing, pb.JOB_STATE_FAILED)
    move(metrics, cancelled, pb.JOB_STATE_CANCELLING)
    move(metrics, cancelled, pb.JOB_STATE_CANCELLED)
    ended = scrape(collectors)

    assert not [key for key in ended if key[0] == "forgeline_trainer_train_loss"]
    assert not [key for key in ended if key[0] == "forgeline_trainer_tokens_per_second"]
    jobs = "forgeline_trainer_jobs"
    assert ended[(jobs, frozenset({("state", "failed")}))] == 1
    assert ended[(jobs, frozenset({("state", "cancelled")}))] == 1
    assert ended[(jobs, frozenset({("state", "training")}))] == 0
    assert ended[(jobs, frozenset({("state", "cancelling")}))] == 0
    count = "forgeline_trainer_job_duration_seconds_count"
    training = {("stage", "training")}
    assert ended[(count, frozenset(training | {("outcome", "failed")}))] == 1
    assert ended[(count, frozenset(training | {("outcome", "cancelled")}))] == 1
    assert ended[(count, frozenset({("stage", "total"), ("outcome", "failed")}))] == 1
    assert ended[(count, frozenset({("stage", "total"), ("outcome", "cancelled")}))] == 1
    # A failed run's tool time is not a run time of the tool doing its job.
    assert ("forgeline_trainer_tool_seconds_count", frozenset({("tool", "train")})) not in ended
