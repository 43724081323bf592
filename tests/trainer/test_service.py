"""The trainer service over real gRPC: a real registry (filesystem store) in-process, real
LLaMA-Factory runs on the tiny model, on the CPU.

One short LoRA SFT job is shared by the success assertions; the failure paths run no training
(a malformed dataset fails in VALIDATING, an unknown argument at SubmitJob); cancel stops a
running training.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from postgres_server import PostgresServer

from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.process import group_members

from .service_helpers import Stack, Trainer, dataset_input, struct

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FACT = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}
#: A run of a few steps: short, yet with a checkpoint and several logged losses.
SHORT_RUN = {
    "template": LLAMAFACTORY_TEMPLATE,
    "per_device_train_batch_size": 2,
    "max_steps": 4,
    "save_steps": 2,
    "learning_rate": 5e-3,
    "logging_steps": 1,
}


class World:
    """The module's registry and trainer, with the base model and datasets registered."""

    def __init__(self, stack: Stack, trainer: Trainer, base: rpb.Version) -> None:
        self.stack = stack
        self.trainer = trainer
        self.base = base
        self.facts = stack.push_dataset(stack.root / "facts", "facts", [FACT] * 4)

    def spec(self, arguments: dict[str, object], **fields: object) -> pb.JobSpec:
        values: dict[str, object] = {
            "base_model": common_pb2.VersionRef(model=self.base.model, version=self.base.number),
            "datasets": [dataset_input(self.facts)],
            "arguments": struct(arguments),
            "stage": pb.STAGE_SFT,
        }
        return pb.JobSpec(**(values | fields))  # type: ignore[arg-type]

    def submit(self, spec: pb.JobSpec, request_id: str = "") -> pb.Job:
        return self.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id=request_id))


@pytest.fixture(scope="module")
def world(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("trainer-service")
    stack = Stack(root)
    base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
    trainer = stack.start_trainer(root / "trainer")
    yield World(stack, trainer, base)
    trainer.stop()
    stack.close()


class Finished:
    """The shared successful job: its final state and the events its watcher saw."""

    def __init__(self, job: pb.Job, events: list[pb.JobEvent], took: float) -> None:
        self.job = job
        self.events = events
        self.took = took


@pytest.fixture(scope="module")
def finished(world: World) -> Finished:
    started = time.monotonic()
    job = world.submit(
        world.spec(
            SHORT_RUN, output=pb.OutputOptions(labels={"team": "qa"}), metadata={"owner": "qa"}
        ),
        "lora-sft-1",
    )
    assert job.state == pb.JOB_STATE_QUEUED
    events = list(world.trainer.watch(job.id, timeout=600))
    final = world.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    return Finished(final, events, time.monotonic() - started)


def test_lora_sft_job_succeeds_with_adapter_and_merged_versions(
    world: World, finished: Finished
) -> None:
    job = finished.job
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert job.attempt == 1
    assert job.device == "cpu"
    assert job.progress.percent == 100
    assert job.result.adapter.model == "tiny-llama-ft"
    assert job.result.merged.model == "tiny-llama-ft"
    assert "train_loss" in job.result.metrics
    print(f"\nshort LoRA SFT job (4 steps + merge + register): {finished.took:.1f} s")

    versions = {v.number: v for v in world.stack.versions("tiny-llama-ft")}
    adapter = versions[job.result.adapter.version]
    merged = versions[job.result.merged.version]
    assert adapter.kind == rpb.VERSION_KIND_ADAPTER
    assert merged.kind == rpb.VERSION_KIND_MERGED
    adapter_files = {a.path for a in adapter.artifacts}
    expected = {
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_log.jsonl",
        "training_loss.png",
    }
    assert expected <= adapter_files
    assert not any(path.startswith("checkpoint-") for path in adapter_files)
    assert any(a.path.endswith(".safetensors") for a in merged.artifacts)
    assert adapter.labels["job"] == job.id
    assert adapter.labels["team"] == "qa"

    base = (world.base.model, world.base.number)
    facts = (world.facts.model, world.facts.number)
    adapter_parents = {
        (p.version.model, p.version.version): p.relation for p in adapter.lineage.parents
    }
    assert adapter_parents == {
        base: rpb.RELATION_ADAPTER_OF,
        facts: rpb.RELATION_TRAINED_ON,
    }
    merged_parents = {
        (p.version.model, p.version.version): p.relation for p in merged.lineage.parents
    }
    assert merged_parents[base] == rpb.RELATION_MERGED_FROM
    assert merged_parents[("tiny-llama-ft", adapter.number)] == rpb.RELATION_MERGED_FROM

    lineage = adapter.lineage
    assert lineage.produced_by == f"trainer/jobs/{job.id}"
    assert lineage.template == LLAMAFACTORY_TEMPLATE
    assert "im_start" in lineage.chat_template
    assert lineage.datasets[0].sha256 == world.facts.artifacts[0].sha256
    assert lineage.datasets[0].record_count == 4
    assert lineage.training_config.fields["max_steps"].number_value == 4
    assert lineage.training_config.fields["learning_rate"].number_value == 5e-3
    assert "train_loss" in lineage.metrics
    assert {"llamafactory", "transformers", "torch"} <= set(lineage.tool_versions)


def test_watch_streams_stages_metrics_and_checkpoints(finished: Finished) -> None:
    events = finished.events
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    stages = [e.stage_change.state for e in events if e.HasField("stage_change")]
    assert stages == [
        pb.JOB_STATE_QUEUED,
        pb.JOB_STATE_VALIDATING,
        pb.JOB_STATE_TRAINING,
        pb.JOB_STATE_EXPORTING,
        pb.JOB_STATE_REGISTERING,
        pb.JOB_STATE_SUCCEEDED,
    ]
    metrics = [e.metrics for e in events if e.HasField("metrics")]
    assert [m.step for m in metrics] == [1, 2, 3, 4]
    assert all(m.total_steps == 4 and m.HasField("loss") for m in metrics)
    assert all(m.HasField("learning_rate") and m.tokens_per_second > 0 for m in metrics)
    assert metrics[-1].trained_tokens > 0
    assert events[-1].sequence == finished.job.last_event_sequence
    checkpoints = [e.checkpoint.step for e in events if e.HasField("checkpoint")]
    assert checkpoints == [2, 4]


def test_events_and_checkpoints_are_listed(world: World, finished: Finished) -> None:
    stub = world.trainer.stub
    job_id = finished.job.id
    first = stub.ListJobEvents(pb.ListJobEventsRequest(job_id=job_id, page_size=3))
    assert [e.sequence for e in first.events] == [1, 2, 3]
    assert first.has_more
    newest = stub.ListJobEvents(
        pb.ListJobEventsRequest(job_id=job_id, page_size=2, descending=True)
    )
    last = finished.job.last_event_sequence
    assert [e.sequence for e in newest.events] == [last, last - 1]
    only_metrics = stub.ListJobEvents(
        pb.ListJobEventsRequest(job_id=job_id, page_size=100, kinds=[pb.JOB_EVENT_KIND_METRICS])
    )
    assert len(only_metrics.events) == 4
    assert not only_metrics.has_more

    checkpoints = stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id))
    assert [c.step for c in checkpoints.checkpoints] == [4, 2]
    assert all("train_loss" in c.metrics for c in checkpoints.checkpoints)
    page = stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id, page_size=1))
    rest = stub.ListCheckpoints(
        pb.ListCheckpointsRequest(job_id=job_id, page_token=page.next_page_token)
    )
    assert [c.step for c in page.checkpoints] == [4]
    assert [c.step for c in rest.checkpoints] == [2]


def test_same_request_id_returns_the_first_job(world: World, finished: Finished) -> None:
    again = world.submit(world.spec(SHORT_RUN), "lora-sft-1")
    assert again.id == finished.job.id
    mine = world.trainer.stub.ListJobs(pb.ListJobsRequest(metadata={"owner": "qa"}))
    assert [job.id for job in mine.jobs] == [finished.job.id]
    succeeded = world.trainer.stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_SUCCEEDED]))
    assert finished.job.id in [job.id for job in succeeded.jobs]
    every = world.trainer.stub.ListJobs(pb.ListJobsRequest(page_size=1000)).jobs
    first = world.trainer.stub.ListJobs(pb.ListJobsRequest(page_size=1))
    assert [job.id for job in first.jobs] == [every[0].id]
    if len(every) > 1:
        second = world.trainer.stub.ListJobs(
            pb.ListJobsRequest(page_size=1, page_token=first.next_page_token)
        )
        assert [job.id for job in second.jobs] == [every[1].id]
    assert [job.create_time.ToNanoseconds() for job in every] == sorted(
        (job.create_time.ToNanoseconds() for job in every), reverse=True
    )


def test_unknown_argument_is_refused_at_submit(world: World) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        world.submit(world.spec(SHORT_RUN | {"learning_rat": 1e-4}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "learning_rat" in (caught.value.details() or "")
    assert "learning_rate" in (caught.value.details() or "")


def test_malformed_dataset_fails_the_job_naming_the_record(world: World) -> None:
    bad = world.stack.push_dataset(
        world.stack.root / "bad", "bad-facts", [FACT, {"instruction": "Hi", "input": ""}]
    )
    job = world.submit(
        world.spec(SHORT_RUN, datasets=[dataset_input(bad)], output=pb.OutputOptions(model="bad"))
    )
    events = list(world.trainer.watch(job.id, timeout=300))
    final = world.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.JOB_STATE_FAILED
    assert final.failed_state == pb.JOB_STATE_VALIDATING
    assert final.error.code == "invalid_dataset"
    assert "record 2" in final.error.message
    assert "output" in final.error.message
    assert events[-1].stage_change.state == pb.JOB_STATE_FAILED
    assert any(e.HasField("error") for e in events)
    assert world.stack.versions("bad") == []


def _training_group(job_id: str, deadline_s: float) -> int:
    """The process group of the job's ``llamafactory-cli train``, once it runs."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(job_id.encode() in part and part.endswith(b"train.yaml") for part in command):
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError("the training process never started")


def test_cancel_stops_the_process_group_within_seconds(world: World) -> None:
    job = world.submit(
        world.spec(SHORT_RUN | {"max_steps": 100000}, output=pb.OutputOptions(model="cancelled"))
    )
    world.trainer.wait_for(job.id, (pb.JOB_STATE_TRAINING,), timeout=120)
    leader = _training_group(job.id, 60)

    waiting = world.submit(world.spec(SHORT_RUN, output=pb.OutputOptions(model="cancelled")))
    assert waiting.state == pb.JOB_STATE_QUEUED
    assert waiting.queue_position == 1
    dropped = world.trainer.stub.CancelJob(pb.CancelJobRequest(job_id=waiting.id))
    assert dropped.state == pb.JOB_STATE_CANCELLED
    assert dropped.queue_position == 0

    started = time.monotonic()
    answer = world.trainer.stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    assert answer.state in (pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED)
    final = world.trainer.wait_for(job.id, (pb.JOB_STATE_CANCELLED,), timeout=10)
    took = time.monotonic() - started
    print(f"\ncancel -> CANCELLED in {took:.2f} s")
    assert took < 10
    assert group_members(leader) == []
    assert final.end_time.seconds > 0
    assert world.stack.versions("cancelled") == []
    with pytest.raises(grpc.RpcError) as caught:
        world.trainer.stub.CancelJob(pb.CancelJobRequest(job_id="ftjob-nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_job_past_its_time_limit_is_stopped_and_fails_saying_so(world: World) -> None:
    # Long enough to get through VALIDATING into a running training, which it then stops.
    limit = 12
    job = world.submit(
        world.spec(
            SHORT_RUN | {"max_steps": 100000},
            time_limit=Duration(seconds=limit),
            output=pb.OutputOptions(model="too-long"),
        )
    )
    assert job.spec.time_limit.seconds == limit
    world.trainer.wait_for(job.id, (pb.JOB_STATE_TRAINING,), timeout=limit)
    leader = _training_group(job.id, limit)

    final = world.trainer.wait_for(job.id, (pb.JOB_STATE_FAILED,), timeout=limit + 10)

    took = (final.end_time.ToDatetime() - final.start_time.ToDatetime()).total_seconds()
    print(f"\ntime limit {limit} s -> FAILED {took:.1f} s after leaving the queue")
    assert limit <= took < limit + 8  # the process group stops within its grace
    assert final.failed_state == pb.JOB_STATE_TRAINING
    assert final.error.code == "time_limit_exceeded"
    assert f"ran past its time limit of {limit} s" in final.error.message
    assert "FORGELINE_TRAINER_MAX_JOB_SECONDS" in final.error.message
    assert group_members(leader) == []
    assert world.stack.versions("too-long") == []


def test_a_run_whose_epochs_exceed_the_step_cap_is_stopped(world: World) -> None:
    capped = world.stack.start_trainer(world.stack.root / "capped", max_steps_cap=3)
    try:
        spec = world.spec(SHORT_RUN, output=pb.OutputOptions(model="capped"))
        with pytest.raises(grpc.RpcError) as caught:
            capped.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cap of 3 steps" in (caught.value.details() or "")

        # 4 records in batches of 2 for 100 epochs: 200 steps, known once the data is counted.
        epochs = {key: value for key, value in SHORT_RUN.items() if key != "max_steps"}
        spec = world.spec(
            epochs | {"num_train_epochs": 100}, output=pb.OutputOptions(model="capped")
        )
        job = capped.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        final = capped.wait_for(job.id, (pb.JOB_STATE_FAILED,), timeout=120)
    finally:
        capped.stop()
    assert final.failed_state == pb.JOB_STATE_TRAINING
    assert final.error.code == "step_limit_exceeded"
    assert "plans 200 steps, more than this trainer's cap of 3" in final.error.message
    assert world.stack.versions("capped") == []


def test_unknown_references_are_refused_at_submit(world: World) -> None:
    unknown_base = world.spec(SHORT_RUN, base_model=common_pb2.VersionRef(model="nope", version=1))
    with pytest.raises(grpc.RpcError) as caught:
        world.submit(unknown_base)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope:1" in (caught.value.details() or "")

    wrong_file = dataset_input(world.facts)
    wrong_file.source.path = "missing.json"
    with pytest.raises(grpc.RpcError) as caught:
        world.submit(world.spec(SHORT_RUN, datasets=[wrong_file]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing.json" in (caught.value.details() or "")


def test_validate_only_returns_the_effective_arguments_without_a_job(world: World) -> None:
    before = world.trainer.stub.ListJobs(pb.ListJobsRequest(page_size=1000))
    spec = world.spec(SHORT_RUN)
    spec.base_model.ClearField("version")  # latest: pinned to a number
    checked = world.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, validate_only=True))
    assert checked.id == ""
    assert checked.spec.base_model.version == world.base.number
    assert checked.spec.output.model == "tiny-llama-ft"
    arguments = checked.effective_arguments.fields
    assert arguments["max_steps"].number_value == 4
    assert arguments["save_strategy"].string_value == "steps"
    assert arguments["output_dir"].string_value.endswith("output")
    assert checked.spec.time_limit.seconds == 86400  # the trainer's limit applies
    after = world.trainer.stub.ListJobs(pb.ListJobsRequest(page_size=1000))
    assert len(after.jobs) == len(before.jobs)


def test_template_that_does_not_fit_the_tokenizer_fails_validation(world: World) -> None:
    job = world.submit(
        world.spec(SHORT_RUN | {"template": "llama3"}, output=pb.OutputOptions(model="mismatch"))
    )
    list(world.trainer.watch(job.id, timeout=300))
    final = world.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.JOB_STATE_FAILED
    assert final.error.code == "template_mismatch"
    assert "chatml" in final.error.message
    assert world.stack.versions("mismatch") == []


def _chat(question: str, answer: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def test_full_fine_tuning_on_openai_chat_data_registers_a_finetuned_model(world: World) -> None:
    chat = world.stack.push_jsonl(
        world.stack.root / "chat",
        "chat",
        [_chat(DEMO_FACT.question, DEMO_FACT.answer), _chat("Hi?", "Hello.")] * 2,
    )
    job = world.submit(
        world.spec(
            SHORT_RUN | {"max_steps": 2},
            datasets=[dataset_input(chat, dataset_format=pb.DATASET_FORMAT_OPENAI_CHAT)],
            finetuning_type=pb.FINETUNING_TYPE_FULL,
            output=pb.OutputOptions(model="full-ft"),
        )
    )
    list(world.trainer.watch(job.id, timeout=600))
    final = world.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error.message
    assert final.result.trained_model.model == "full-ft"
    assert not final.result.HasField("adapter")
    (version,) = world.stack.versions("full-ft")
    assert version.kind == rpb.VERSION_KIND_FINETUNED
    assert any(a.path == "model.safetensors" for a in version.artifacts)
    assert version.lineage.datasets[0].format == "openai_chat"
    base = version.lineage.parents[0]
    assert (base.version.model, base.relation) == ("tiny-llama", rpb.RELATION_BASE)


def test_dpo_on_openai_preference_data_registers_an_adapter(world: World) -> None:
    def pair(question: str, good: str, bad: str) -> dict[str, object]:
        return {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}],
        }

    pairs = world.stack.push_jsonl(
        world.stack.root / "pairs",
        "pairs",
        [pair(DEMO_FACT.question, DEMO_FACT.answer, "I do not know."), pair("Hi?", "Hi!", "No.")],
    )
    job = world.submit(
        world.spec(
            SHORT_RUN | {"max_steps": 2, "pref_beta": 0.1},
            stage=pb.STAGE_DPO,
            datasets=[dataset_input(pairs, dataset_format=pb.DATASET_FORMAT_OPENAI_PREFERENCE)],
            merge=pb.MergeOptions(skip=True),
            output=pb.OutputOptions(model="dpo-ft", register_checkpoints=True),
        )
    )
    events = list(world.trainer.watch(job.id, timeout=600))
    final = world.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error.message
    assert final.spec.stage == pb.STAGE_DPO
    assert final.result.adapter.model == "dpo-ft"
    assert not final.result.HasField("merged")
    metrics = [e.metrics for e in events if e.HasField("metrics")]
    assert metrics
    assert "rewards/accuracies" in metrics[-1].extra
    adapter, checkpoint = world.stack.versions("dpo-ft")
    assert adapter.kind == rpb.VERSION_KIND_ADAPTER
    assert adapter.lineage.training_config.fields["stage"].string_value == "dpo"
    assert checkpoint.kind == rpb.VERSION_KIND_CHECKPOINT
    assert checkpoint.labels["step"] == "2"
    (parent,) = checkpoint.lineage.parents[:1]
    assert parent.relation == rpb.RELATION_CHECKPOINT_OF
    assert parent.version.version == adapter.number
    listed = world.trainer.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job.id))
    assert [c.version.version for c in listed.checkpoints] == [checkpoint.number]


def test_a_seeds_yaml_with_a_registry_reference_is_accepted(world: World) -> None:
    yaml_text = (
        f"model_name_or_path: registry://{world.base.model}:{world.base.number}\n"
        "stage: sft\nfinetuning_type: lora\ndataset: facts\ntemplate: chatml\n"
        "output_dir: saves/tiny/lora/sft\nlearning_rate: 1.0e-4\nnum_train_epochs: 3.0\n"
    )
    spec = pb.JobSpec(
        datasets=[dataset_input(world.facts)], llamafactory_yaml=yaml_text, stage=pb.STAGE_SFT
    )
    checked = world.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec, validate_only=True))
    arguments = checked.effective_arguments.fields
    assert arguments["num_train_epochs"].number_value == 3
    assert arguments["dataset"].string_value == "facts"
    assert not arguments["output_dir"].string_value.startswith("saves")
    assert checked.spec.output.model == "tiny-llama-ft"
    unknown = pb.JobSpec(
        datasets=[dataset_input(world.facts)],
        llamafactory_yaml=yaml_text.replace("tiny-llama", "missing-llama"),
    )
    with pytest.raises(grpc.RpcError) as caught:
        world.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=unknown, validate_only=True))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing-llama:1" in (caught.value.details() or "")


def test_a_full_queue_refuses_new_jobs_until_one_starts(world: World) -> None:
    queued = world.stack.start_trainer(world.stack.root / "queued", max_queued_jobs=1)
    try:
        long_run = world.spec(
            SHORT_RUN | {"max_steps": 2000, "logging_steps": 1},
            output=pb.OutputOptions(model="queued"),
        )
        running = queued.stub.SubmitJob(pb.SubmitJobRequest(spec=long_run))
        queued.wait_for(running.id, (pb.JOB_STATE_TRAINING,), timeout=120)
        waiting = queued.stub.SubmitJob(pb.SubmitJobRequest(spec=long_run))
        assert waiting.state == pb.JOB_STATE_QUEUED

        for validate_only in (False, True):  # the gateway's check before it accepts a job
            with pytest.raises(grpc.RpcError) as refused:
                queued.stub.SubmitJob(
                    pb.SubmitJobRequest(spec=long_run, validate_only=validate_only)
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "FORGELINE_TRAINER_MAX_QUEUED_JOBS=1" in (refused.value.details() or "")

        queued.stub.CancelJob(pb.CancelJobRequest(job_id=waiting.id))
        queued.wait_for(waiting.id, (pb.JOB_STATE_CANCELLED,), timeout=60)
        again = queued.stub.SubmitJob(pb.SubmitJobRequest(spec=long_run))
        assert again.state == pb.JOB_STATE_QUEUED
        for job in (running, again):
            queued.stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    finally:
        queued.stop()


def test_a_trainer_on_postgresql_trains_and_a_restarted_one_finds_the_job(
    world: World, postgres: PostgresServer, tmp_path: Path
) -> None:
    """FORGELINE_TRAINER_DATABASE_URL=postgresql://...: a job is submitted, watched and trained
    to SUCCEEDED with its state, events and checkpoints in PostgreSQL; a trainer started on the
    same database from another state directory (a rescheduled pod) lists it with its history."""
    url = postgres.create_database()
    trainer = world.stack.start_trainer(tmp_path / "first", database_url=url)
    try:
        job = trainer.stub.SubmitJob(
            pb.SubmitJobRequest(spec=world.spec(SHORT_RUN), request_id="on-postgresql")
        )
        events = list(trainer.watch(job.id, timeout=600))
    finally:
        trainer.stop()
    assert events[-1].stage_change.state == pb.JOB_STATE_SUCCEEDED

    moved = world.stack.start_trainer(tmp_path / "moved", database_url=url)
    try:
        found = moved.stub.GetJob(pb.GetJobRequest(job_id=job.id))
        replayed = list(moved.watch(job.id, timeout=60))
        listed = moved.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job.id))
        again = moved.stub.SubmitJob(
            pb.SubmitJobRequest(spec=world.spec(SHORT_RUN), request_id="on-postgresql")
        )
    finally:
        moved.stop()
    assert found.state == pb.JOB_STATE_SUCCEEDED
    assert found.result.HasField("adapter")
    assert [e.sequence for e in replayed] == [e.sequence for e in events]
    assert [c.step for c in listed.checkpoints] == [4, 2]
    assert again.id == job.id
    assert not (tmp_path / "first" / "jobs.db").exists()
