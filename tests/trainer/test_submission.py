"""SubmitJob's checks: a spec becomes typed LLaMA-Factory arguments, or a fix-it refusal."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct

from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.submission import JobPlan, plan_job

from .test_settings import SEEDS_YAML


def source(path: str) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(version=common_pb2.VersionRef(model="data", version=1), path=path)


SFT_DATA = trainer_pb2.DatasetInput(
    source=source("data/facts.json"), format=trainer_pb2.DATASET_FORMAT_ALPACA
)
PAIRS = trainer_pb2.DatasetInput(
    name="pairs",
    source=source("pairs.json"),
    format=trainer_pb2.DATASET_FORMAT_ALPACA,
    ranking=True,
    columns={"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
)
ALPACA = trainer_pb2.DATASET_FORMAT_ALPACA


def dataset(path: str, name: str = "", **fields: Any) -> trainer_pb2.DatasetInput:
    defaults: dict[str, Any] = {"format": ALPACA}
    return trainer_pb2.DatasetInput(name=name, source=source(path), **(defaults | fields))


BASE = common_pb2.VersionRef(model="tiny-llama", version=1)


def job(arguments: dict[str, Any] | None = None, **fields: Any) -> trainer_pb2.JobSpec:
    defaults: dict[str, Any] = {"base_model": BASE, "datasets": [SFT_DATA]}
    spec = trainer_pb2.JobSpec(**(defaults | fields))
    if arguments is not None:
        struct = Struct()
        struct.update(arguments)
        spec.arguments.CopyFrom(struct)
    return spec


def refusal(spec: trainer_pb2.JobSpec, device: DeviceKind = "cpu") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        plan_job(spec, device=device)
    return caught.value


def test_struct_arguments_become_typed_llamafactory_arguments() -> None:
    spec = job(
        {"num_train_epochs": 150, "per_device_train_batch_size": 16.0, "learning_rate": 5e-3},
        stage=trainer_pb2.STAGE_SFT,
    )

    plan = plan_job(spec, device="cpu")

    assert plan.arguments == {
        "stage": "sft",
        "finetuning_type": "lora",
        "num_train_epochs": 150.0,
        "per_device_train_batch_size": 16,  # a Struct number is a double; the argument an int
        "learning_rate": 5e-3,
        "dataset": "facts",  # named after the artifact's file
    }
    assert isinstance(plan.arguments["per_device_train_batch_size"], int)
    assert plan.base_model == BASE
    assert plan.datasets[0].format is DatasetFormat.ALPACA


def test_a_seeds_yaml_is_accepted_as_is_with_the_trainer_owning_paths() -> None:
    spec = trainer_pb2.JobSpec(
        datasets=[
            dataset("a.json", "identity"),
            dataset("b.json", "alpaca_en_demo"),
        ],
        llamafactory_yaml=SEEDS_YAML,
    )

    plan: JobPlan = plan_job(spec, device="cpu")

    assert plan.base_model == "tiny/1"  # the registry:// prefix dropped
    assert "output_dir" not in plan.arguments  # the trainer sets its own
    assert plan.arguments["lr_scheduler_type"] == "cosine"
    assert plan.arguments["dataset"] == "identity,alpaca_en_demo"


def test_qlora_on_cpu_is_refused_before_queueing() -> None:
    error = refusal(
        job(stage=trainer_pb2.STAGE_SFT, finetuning_type=trainer_pb2.FINETUNING_TYPE_QLORA)
    )

    assert error.field == "quantization_bit"
    assert "needs a CUDA GPU" in error.message


def test_qlora_on_a_gpu_defaults_to_4_bits() -> None:
    spec = job(stage=trainer_pb2.STAGE_SFT, finetuning_type=trainer_pb2.FINETUNING_TYPE_QLORA)

    plan = plan_job(spec, device="cuda")

    assert (plan.arguments["finetuning_type"], plan.arguments["quantization_bit"]) == ("lora", 4)


def test_dpo_with_sft_data_is_refused_and_with_pairs_accepted() -> None:
    assert "trains on preference pairs" in refusal(job(stage=trainer_pb2.STAGE_DPO)).message

    plan = plan_job(job(stage=trainer_pb2.STAGE_DPO, datasets=[PAIRS]), device="cpu")
    assert plan.datasets[0].ranking


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (job({"stage": "sft", "lerning_rate": 1}), "lerning_rate", "did you mean 'learning_rate'"),
        (job({"stage": "pt"}, stage=trainer_pb2.STAGE_SFT), "stage", "the spec says stage 'sft'"),
        (job({"stage": "sft", "output_dir": "/x"}), "output_dir", "set by the trainer"),
        (job({"stage": "sft"}, gpu_count=2), "gpu_count", "runs on the CPU and has none"),
        (job({"stage": "sft"}, datasets=[]), "datasets", "at least one training dataset"),
        (
            job({"stage": "sft"}, datasets=[dataset("")]),
            "datasets[0].name",
            "must be letters, digits",
        ),
        (
            job(
                {"stage": "sft"},
                datasets=[dataset("a.json", format=trainer_pb2.DATASET_FORMAT_UNSPECIFIED)],
            ),
            "datasets[0].format",
            "DATASET_FORMAT_UNSPECIFIED is not supported",
        ),
        (
            job(
                {"stage": "sft"},
                datasets=[dataset("a.json", columns={"answer": "x"})],
            ),
            "datasets[0].columns",
            "unknown column or tag answer",
        ),
        (
            trainer_pb2.JobSpec(datasets=[SFT_DATA], stage=trainer_pb2.STAGE_SFT),
            "base_model",
            "no base model",
        ),
        (job({"stage": "sft"}, metadata={str(i): "v" for i in range(17)}), "metadata", "16 pairs"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(
    spec: trainer_pb2.JobSpec, field: str, message: str
) -> None:
    error = refusal(spec)

    assert error.field == field
    assert message in error.message


def test_openai_preference_data_is_preference_data_for_dpo() -> None:
    pairs = dataset("pairs.jsonl", format=trainer_pb2.DATASET_FORMAT_OPENAI_PREFERENCE)
    plan = plan_job(job({"stage": "dpo"}, datasets=[pairs]), device="cpu")
    assert plan.datasets[0].ranking
    assert plan.datasets[0].format is DatasetFormat.OPENAI_PREFERENCE
    chat = dataset("chat.jsonl", format=trainer_pb2.DATASET_FORMAT_OPENAI_CHAT)
    assert "sft" in refusal(job({"stage": "dpo"}, datasets=[chat])).args[0]
