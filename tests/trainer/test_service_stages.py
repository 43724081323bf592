"""KTO and reward-model (RM) jobs through the trainer service on the tiny model (real registry on
the filesystem store, real LLaMA-Factory, CPU), and PPO refused at SubmitJob with its reason."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb

from .service_helpers import Stack, Trainer, dataset_input, struct

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: Two optimizer steps of two records: enough to log losses and register a result.
SHORT_RUN = {
    "template": LLAMAFACTORY_TEMPLATE,
    "per_device_train_batch_size": 2,
    "max_steps": 2,
    "learning_rate": 5e-3,
}
WRONG = "The capital of the tiny kingdom is Nowhere."


def conversation(answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": DEMO_FACT.question}, {"from": "gpt", "value": answer}]


class World:
    """The module's registry and trainer with the base model registered."""

    def __init__(self, stack: Stack, trainer: Trainer, base: rpb.Version) -> None:
        self.stack = stack
        self.trainer = trainer
        self.base = base

    def run(self, spec: pb.JobSpec) -> pb.Job:
        """Submit ``spec`` and wait for the job to end; the final job."""
        job = self.trainer.stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
        for _ in self.trainer.watch(job.id, timeout=600):
            pass
        final: pb.Job = self.trainer.stub.GetJob(pb.GetJobRequest(job_id=job.id))
        return final

    def spec(
        self, stage: pb.Stage.ValueType, dataset: pb.DatasetInput, **fields: object
    ) -> pb.JobSpec:
        values: dict[str, object] = {
            "base_model": common_pb2.VersionRef(model=self.base.model, version=self.base.number),
            "datasets": [dataset],
            "arguments": struct(SHORT_RUN),
            "stage": stage,
        }
        return pb.JobSpec(**(values | fields))  # type: ignore[arg-type]

    def parents(self, version: rpb.Version) -> dict[tuple[str, int], int]:
        return {(p.version.model, p.version.version): p.relation for p in version.lineage.parents}


@pytest.fixture(scope="module")
def world(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("trainer-stages")
    stack = Stack(root)
    base = stack.push(tiny_model.path, "tiny-llama", rpb.VERSION_KIND_BASE)
    trainer = stack.start_trainer(root / "trainer")
    yield World(stack, trainer, base)
    trainer.stop()
    stack.close()


def test_kto_on_sharegpt_records_with_kto_tags_registers_adapter_and_merged(
    world: World,
) -> None:
    records = [
        {"conversations": conversation(DEMO_FACT.answer), "kto_tag": True},
        {"conversations": conversation(WRONG), "kto_tag": False},
    ] * 2
    labelled = world.stack.push_jsonl(world.stack.root / "kto", "labelled", records)
    dataset = dataset_input(labelled, dataset_format=pb.DATASET_FORMAT_SHAREGPT)
    dataset.columns["kto_tag"] = "kto_tag"

    job = world.run(world.spec(pb.STAGE_KTO, dataset, output=pb.OutputOptions(model="kto-ft")))

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert job.spec.stage == pb.STAGE_KTO
    assert "train_loss" in job.result.metrics
    versions = {v.number: v for v in world.stack.versions("kto-ft")}
    adapter = versions[job.result.adapter.version]
    merged = versions[job.result.merged.version]
    assert adapter.kind == rpb.VERSION_KIND_ADAPTER
    assert merged.kind == rpb.VERSION_KIND_MERGED
    assert adapter.lineage.training_config.fields["stage"].string_value == "kto"
    assert world.parents(adapter) == {
        (world.base.model, world.base.number): rpb.RELATION_ADAPTER_OF,
        (labelled.model, labelled.number): rpb.RELATION_TRAINED_ON,
    }
    assert adapter.lineage.datasets[0].sha256 == labelled.artifacts[0].sha256
    assert world.parents(merged)[("kto-ft", adapter.number)] == rpb.RELATION_MERGED_FROM


def test_kto_records_without_a_boolean_tag_fail_validation_naming_the_record(
    world: World,
) -> None:
    records = [
        {"conversations": conversation(DEMO_FACT.answer), "kto_tag": True},
        {"conversations": conversation(WRONG), "kto_tag": "no"},
    ]
    labelled = world.stack.push_jsonl(world.stack.root / "kto-bad", "badly-labelled", records)
    dataset = dataset_input(labelled, dataset_format=pb.DATASET_FORMAT_SHAREGPT)
    dataset.columns["kto_tag"] = "kto_tag"

    job = world.run(world.spec(pb.STAGE_KTO, dataset))

    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.code == "invalid_dataset"
    assert "record 2: 'kto_tag' must be true or false" in job.error.message


def test_reward_model_on_preference_pairs_registers_its_adapter_with_the_value_head(
    world: World,
) -> None:
    pairs = [
        {
            "instruction": DEMO_FACT.question,
            "input": "",
            "chosen": DEMO_FACT.answer,
            "rejected": WRONG,
        }
    ] * 4
    preferences = world.stack.push_dataset(world.stack.root / "rm", "preferences", pairs)
    dataset = dataset_input(preferences)
    dataset.ranking = True

    job = world.run(world.spec(pb.STAGE_RM, dataset, output=pb.OutputOptions(model="rm-ft")))

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert job.spec.stage == pb.STAGE_RM
    # A merge would drop the value head (LLaMA-Factory exports a plain causal LM): the adapter,
    # value head included, is the reward model.
    assert job.spec.merge.skip
    assert not job.result.HasField("merged")
    (adapter,) = world.stack.versions("rm-ft")
    assert adapter.number == job.result.adapter.version
    assert adapter.kind == rpb.VERSION_KIND_ADAPTER
    files = {artifact.path for artifact in adapter.artifacts}
    assert {"adapter_model.safetensors", "value_head.safetensors"} <= files
    assert adapter.lineage.training_config.fields["stage"].string_value == "rm"
    assert world.parents(adapter) == {
        (world.base.model, world.base.number): rpb.RELATION_ADAPTER_OF,
        (preferences.model, preferences.number): rpb.RELATION_TRAINED_ON,
    }
    assert "train_loss" in adapter.lineage.metrics


def test_ppo_is_refused_at_submission_with_the_reason_and_what_to_do(world: World) -> None:
    pairs = world.stack.push_dataset(
        world.stack.root / "ppo", "prompts", [{"instruction": DEMO_FACT.question, "output": ""}]
    )
    with pytest.raises(grpc.RpcError) as refused:
        world.trainer.stub.SubmitJob(
            pb.SubmitJobRequest(spec=world.spec(pb.STAGE_PPO, dataset_input(pairs)))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "ppo" in details
    assert "reward model" in details
    assert "trl 0.8.6 to 0.9.6" in details  # LLaMA-Factory's PPO refuses newer trl releases
    assert "dpo" in details
