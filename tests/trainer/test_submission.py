"""SubmitJob's checks: a spec becomes typed LLaMA-Factory arguments, or a fix-it refusal."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.llamafactory.policy import JobPolicy
from forgeline_trainer.settings import TrainerSettings
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


def refusal(
    spec: trainer_pb2.JobSpec, device: DeviceKind = "cpu", policy: JobPolicy | None = None
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        plan_job(spec, device=device, policy=policy)
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

    # LLaMA-Factory's examples write trust_remote_code: true, which only an operator can allow.
    assert refusal(spec).field == "trust_remote_code"
    plan: JobPlan = plan_job(spec, device="cpu", policy=JobPolicy(trust_remote_code=True))

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


# A training YAML as LLaMA-Factory's tutorials write it (examples/train_lora and
# examples/train_full), model and data given the Forgeline way.
TUTORIAL_YAML = """\
### model
model_name_or_path: tiny-llama:1

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
deepspeed: examples/deepspeed/ds_z3_config.json  # choices: [ds_z0_config.json, ds_z2_config.json]

### dataset
dataset: identity
template: chatml
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
fp16: true
ddp_timeout: 180000000
include_num_input_tokens_seen: true
resume_from_checkpoint: null

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


def tutorial_job(yaml_text: str = TUTORIAL_YAML) -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        datasets=[dataset("a.json", "identity")], llamafactory_yaml=yaml_text
    )


def _everything_installed(module: str) -> bool:
    return True


def test_a_tutorial_yaml_plans_on_a_gpu_with_the_trainers_own_deepspeed_config() -> None:
    plan = plan_job(tutorial_job(), device="cuda", installed=_everything_installed)

    assert plan.arguments["deepspeed"] == "z3"  # the shipped config of that name
    assert plan.arguments["report_to"] == "none"
    assert plan.arguments["ddp_timeout"] == 180000000
    assert plan.arguments["eval_strategy"] == "steps"
    assert "output_dir" not in plan.arguments
    assert "resume_from_checkpoint" not in plan.arguments  # null means unset
    bf16 = plan_job(
        tutorial_job(TUTORIAL_YAML.replace("fp16", "bf16")),
        device="cuda",
        installed=_everything_installed,
    )
    assert bf16.arguments["bf16"] is True


def test_deepspeed_or_a_logger_the_trainer_lacks_is_refused_at_submission() -> None:
    # Neither DeepSpeed nor TensorBoard is in this environment (nor in the trainer image).
    with pytest.raises(InvalidArgument) as deepspeed:
        plan_job(tutorial_job(), device="cuda")
    assert deepspeed.value.field == "deepspeed"
    assert "deepspeed is not installed in this trainer" in deepspeed.value.message
    assert "Remove 'deepspeed'" in deepspeed.value.message

    tensorboard = refusal(job({"stage": "sft", "report_to": ["none", "tensorboard"]}))
    assert tensorboard.field == "report_to"
    assert "tensorboard is not installed in this trainer" in tensorboard.message
    assert "report_to: none" in tensorboard.message
    assert plan_job(job({"stage": "sft", "report_to": "none"}), device="cpu")


def test_a_tutorial_yaml_with_deepspeed_is_refused_on_the_cpu_with_the_fix() -> None:
    error = refusal(tutorial_job())

    assert error.field == "deepspeed"
    assert "Remove 'deepspeed' to train on the CPU" in error.message
    no_deepspeed = TUTORIAL_YAML.replace("deepspeed: examples/deepspeed", "# deepspeed: x")
    assert plan_job(tutorial_job(no_deepspeed), device="cpu").arguments["fp16"] is True


@pytest.mark.parametrize(
    ("arguments", "field", "says"),
    [
        ({"trust_remote_code": True}, "trust_remote_code", "FORGELINE_TRAINER_TRUST_REMOTE_CODE"),
        ({"resume_from_checkpoint": "/etc"}, "resume_from_checkpoint", "set by the trainer"),
        ({"hub_token": "hf_x"}, "hub_token", "tokens are never accepted in job arguments"),
        ({"deepspeed": "/etc/passwd"}, "deepspeed", "the trainer reads no file a job names"),
        ({"report_to": "wandb"}, "report_to", "FORGELINE_TRAINER_ALLOWED_REPORTERS"),
        ({"report_to": ["tensorboard", "mlflow"]}, "report_to", "names 'mlflow'"),
        ({"offload_folder": "/var/tmp"}, "offload_folder", "a path on the trainer's disk"),
        ({"generation_config": "/etc/gen"}, "generation_config", "max_new_tokens"),
        ({"push_to_hub": True}, "push_to_hub", "never to a model hub"),
        ({"max_steps": 1_000_001}, "max_steps", "cap of 1000000 steps"),
        ({"media_dir": "/home"}, "media_dir", "a path on the trainer's disk"),
        ({"ref_model": "/models/other"}, "ref_model", "use the base model as their reference"),
        ({"master_addr": "10.0.0.1"}, "master_addr", "launches the job's processes itself"),
        ({"use_swanlab": True}, "use_swanlab", "the swanlab logger"),
        ({"infer_backend": "vllm"}, "infer_backend", "inference engines"),
        ({"export_size": 2}, "export_size", "merge.export_size"),
    ],
)
def test_arguments_beyond_the_allow_list_are_refused_naming_them(
    arguments: dict[str, Any], field: str, says: str
) -> None:
    error = refusal(job({"stage": "sft"} | arguments))

    assert error.field == field
    assert f"'{field}'" in error.message
    assert says in error.message


def test_every_refused_argument_is_reported_at_once() -> None:
    error = refusal(
        job({"stage": "sft", "hub_token": "x", "trust_remote_code": True, "offload_folder": "/t"})
    )

    lines = error.message.splitlines()
    # A Struct keeps no order: one line per argument, whichever comes first.
    assert sorted(line.split("'")[1] for line in lines) == [
        "hub_token",
        "offload_folder",
        "trust_remote_code",
    ]


def test_the_operator_can_allow_remote_code_and_a_network_logger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGELINE_TRAINER_TRUST_REMOTE_CODE", "true")
    monkeypatch.setenv("FORGELINE_TRAINER_ALLOWED_REPORTERS", '["wandb", "swanlab"]')
    policy = TrainerSettings().job_policy()
    spec = job(
        {
            "stage": "sft",
            "trust_remote_code": True,
            "report_to": ["wandb", "tensorboard"],
            "use_swanlab": True,
            "swanlab_project": "p",
        }
    )

    plan = plan_job(spec, device="cpu", policy=policy, installed=_everything_installed)

    assert plan.arguments["trust_remote_code"] is True
    assert plan.arguments["report_to"] == ["wandb", "tensorboard"]
    # A token stays refused whatever the operator allows: it goes in the environment.
    swanlab_key = job({"stage": "sft", "use_swanlab": True, "swanlab_api_key": "k"})
    assert refusal(swanlab_key, policy=policy).field == "swanlab_api_key"
    assert "mlflow" in refusal(job({"stage": "sft", "report_to": "mlflow"}), policy=policy).message


def test_the_step_cap_and_the_time_limit_are_the_operators() -> None:
    policy = JobPolicy(max_steps_cap=100, max_job_seconds=600)
    assert plan_job(job({"stage": "sft", "max_steps": 100}), device="cpu", policy=policy)
    over = refusal(job({"stage": "sft", "max_steps": 101}), policy=policy)
    assert "cap of 100 steps" in over.message

    ten_minutes = job({"stage": "sft"}, time_limit=Duration(seconds=600))
    assert plan_job(ten_minutes, device="cpu", policy=policy)
    longer = refusal(job({"stage": "sft"}, time_limit=Duration(seconds=601)), policy=policy)
    assert longer.field == "time_limit"
    assert "above this trainer's limit of 600 s" in longer.message
    negative = refusal(job({"stage": "sft"}, time_limit=Duration(seconds=-1)), policy=policy)
    assert "negative" in negative.message
