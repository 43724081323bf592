"""The trainer's ``/metrics`` over HTTP while and after a real LoRA SFT job on the tiny model
(real registry on the filesystem store, real LLaMA-Factory, CPU): what an operator's Grafana
shows, clean for promtool, and still right after the trainer restarts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb

from .service_helpers import Stack, Trainer, dataset_input, struct

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FACT = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a /metrics page by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@dataclass
class Observed:
    """A job and the metrics pages scraped during and after it."""

    stack: Stack
    trainer: Trainer
    state_dir: Path
    job: pb.Job
    losses: list[float]
    during: Samples
    after: Samples
    after_text: str


@pytest.fixture(scope="module")
def observed(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("trainer-metrics")
    stack = Stack(root)
    state_dir = root / "trainer"
    trainer = stack.start_trainer(state_dir)
    try:
        base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
        facts = stack.push_dataset(root / "facts", "facts", [FACT] * 4)
        spec = pb.JobSpec(
            base_model=common_pb2.VersionRef(model=base.model, version=base.number),
            datasets=[dataset_input(facts)],
            stage=pb.STAGE_SFT,
            arguments=struct(
                {
                    "template": LLAMAFACTORY_TEMPLATE,
                    "per_device_train_batch_size": 2,
                    "max_steps": 4,
                    "learning_rate": 5e-3,
                }
            ),
        )
        job = trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        losses: list[float] = []
        during: Samples = {}
        for event in trainer.watch(job.id, timeout=500):
            if event.HasField("metrics") and event.metrics.HasField("loss"):
                losses.append(event.metrics.loss)
                if not during:
                    # The first logged step: the job is still training (3 steps, the merge
                    # and the registration are ahead).
                    during = samples(trainer.metrics())
        final = trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
        text = trainer.metrics()
        observed = Observed(stack, trainer, state_dir, final, losses, during, samples(text), text)
        yield observed
    finally:
        observed.trainer.stop()
        stack.close()


def test_loss_and_tokens_per_second_are_shown_while_the_job_trains(observed: Observed) -> None:
    job_id = observed.job.id
    during = observed.during
    assert value(during, "forgeline_trainer_jobs", state="training") == 1
    loss = value(during, "forgeline_trainer_train_loss", job_id=job_id)
    assert loss is not None
    assert loss in observed.losses
    speed = value(during, "forgeline_trainer_tokens_per_second", job_id=job_id)
    assert speed is not None
    assert speed > 0


def test_a_finished_job_is_counted_succeeded_with_durations(observed: Observed) -> None:
    assert observed.job.state == pb.JOB_STATE_SUCCEEDED, observed.job.error.message
    after = observed.after
    assert value(after, "forgeline_trainer_jobs", state="succeeded") == 1
    for state in ("queued", "validating", "training", "exporting", "registering", "failed"):
        assert value(after, "forgeline_trainer_jobs", state=state) == 0
    # Per-job series end with the job (bounded by the running jobs).
    assert not [key for key in after if key[0] == "forgeline_trainer_train_loss"]
    assert not [key for key in after if key[0] == "forgeline_trainer_tokens_per_second"]
    duration = "forgeline_trainer_job_duration_seconds_count"
    for stage in ("queued", "validating", "training", "exporting", "registering"):
        assert value(after, duration, stage=stage, outcome="completed") == 1, stage
    assert value(after, duration, stage="total", outcome="succeeded") == 1
    seconds = "forgeline_trainer_job_duration_seconds_sum"
    total = value(after, seconds, stage="total", outcome="succeeded")
    training = value(
        after, "forgeline_trainer_job_duration_seconds_sum", stage="training", outcome="completed"
    )
    assert total is not None
    assert training is not None
    assert 0 < training < total
    train_tool = value(after, "forgeline_trainer_tool_seconds_sum", tool="train")
    assert train_tool is not None
    assert train_tool == pytest.approx(observed.job.result.metrics["train_process_seconds"])
    assert train_tool <= training
    assert value(after, "forgeline_trainer_tool_seconds_count", tool="export") == 1


def test_metrics_pass_promtool(observed: Observed) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [promtool, "check", "metrics"],
        input=observed.after_text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.strip() == ""


def test_job_counts_come_from_the_store_after_a_restart(observed: Observed) -> None:
    observed.trainer.stop()
    observed.trainer = observed.stack.start_trainer(observed.state_dir)
    found = samples(observed.trainer.metrics())
    listed = observed.trainer.stub.ListJobs(pb.ListJobsRequest())
    assert [job.state for job in listed.jobs] == [pb.JOB_STATE_SUCCEEDED]
    assert value(found, "forgeline_trainer_jobs", state="succeeded") == 1
    assert value(found, "forgeline_trainer_jobs", state="training") == 0
