"""LLaMA-Factory arguments: any argument it accepts passes, anything else is refused by name."""

from __future__ import annotations

import pytest

from forgeline_kit.errors import InvalidArgument
from forgeline_trainer.llamafactory.schema import derive_schema, load_schema
from forgeline_trainer.llamafactory.settings import parse_yaml, validate_arguments

# A training YAML as LLaMA-Factory's examples write it, section comments and all.
SEEDS_YAML = """\
### model
model_name_or_path: registry://tiny/1
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
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
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def refusal(raw: dict[str, object]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_arguments(raw)
    return caught.value


def test_seeds_yaml_is_accepted_as_is() -> None:
    arguments = validate_arguments(parse_yaml(SEEDS_YAML), allow_trainer_owned=True)

    assert arguments["learning_rate"] == pytest.approx(1e-4)
    assert arguments["num_train_epochs"] == 3.0
    assert arguments["lr_scheduler_type"] == "cosine"
    assert arguments["dataset"] == "identity,alpaca_en_demo"
    assert "resume_from_checkpoint" not in arguments  # null means "not set"


def test_arguments_of_every_llamafactory_group_are_accepted() -> None:
    raw = {
        "flash_attn": "fa2",  # ModelArguments (an enum)
        "packing": True,  # DataArguments
        "deepspeed": {"zero_optimization": {"stage": 2}},  # Seq2SeqTrainingArguments
        "lora_alpha": 16,  # FinetuningArguments
        "max_new_tokens": 64,  # GeneratingArguments
        "quantization_bit": 4,
    }

    assert validate_arguments(raw) == raw


def test_unknown_argument_is_named_with_a_suggestion() -> None:
    error = refusal({"stage": "sft", "lerning_rate": 1e-4})

    assert error.field == "lerning_rate"
    assert "unknown LLaMA-Factory argument 'lerning_rate'" in error.message
    assert "did you mean 'learning_rate'" in error.message


def test_numbers_take_the_argument_type() -> None:
    arguments = validate_arguments(
        {"num_train_epochs": 150, "max_steps": 150.0, "learning_rate": "1e-4"}
    )

    assert arguments == {"num_train_epochs": 150.0, "max_steps": 150, "learning_rate": 1e-4}
    assert isinstance(arguments["max_steps"], int)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"max_steps": 2.5}, "'max_steps' must be a whole number; got 2.5"),
        ({"lora_rank": True}, "'lora_rank' must be a whole number; got True"),
        ({"packing": "often"}, "'packing' must be true or false"),
        ({"template": 3}, "'template' must be a string"),
        (
            {"lr_scheduler_type": "cosine_decay"},
            "'lr_scheduler_type' must be one of linear, cosine",
        ),
        ({"stage": "grpo"}, "'stage' must be one of pt, sft, rm, ppo, dpo, kto"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(
    raw: dict[str, object], expected: str
) -> None:
    error = refusal(raw)

    assert expected in error.message
    assert error.field == next(iter(raw))


def test_every_problem_is_reported_at_once() -> None:
    error = refusal({"lerning_rate": 1e-4, "max_steps": 2.5, "output_dir": "/tmp/x"})

    lines = error.message.splitlines()
    assert len(lines) == 3
    assert "set by the trainer" in lines[2]


def test_trainer_owned_paths_are_refused_in_argument_mode() -> None:
    error = refusal({"output_dir": "saves/x"})

    assert error.field == "output_dir"
    assert "'output_dir' is set by the trainer" in error.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "stage: [sft\n"])
def test_a_yaml_that_is_not_an_argument_mapping_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_yaml(text)

    assert caught.value.field == "llamafactory_yaml"


@pytest.mark.slow
def test_schema_snapshot_matches_the_installed_llamafactory() -> None:
    # Imports torch and LLaMA-Factory (~10 s); a stale snapshot is regenerated with
    # `python -m forgeline_trainer.llamafactory.schema`.
    assert derive_schema() == load_schema()
