"""The argument allow-list: every LLaMA-Factory argument classified, the special rules, and the
DeepSpeed configs a job names (written into its work directory when it trains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from forgeline_kit.errors import InvalidArgument
from forgeline_trainer.jobs.workspace import JobWorkspace, launch_arguments
from forgeline_trainer.llamafactory import policy
from forgeline_trainer.llamafactory.deepspeed import (
    SHIPPED_CONFIGS,
    normalize_deepspeed,
    shipped_config,
    write_deepspeed_config,
)
from forgeline_trainer.llamafactory.policy import (
    POLICY,
    SPECIAL_RULES,
    JobPolicy,
    Treatment,
    rule_for,
)
from forgeline_trainer.llamafactory.schema import ArgumentSchema, ArgumentSpec, load_schema
from forgeline_trainer.llamafactory.settings import validate_arguments
from forgeline_trainer.settings import TrainerSettings


def refusal(raw: dict[str, Any], rules: JobPolicy | None = None) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_arguments(raw, policy=rules)
    return caught.value


def test_every_llamafactory_argument_is_classified() -> None:
    names = set(load_schema().by_name())

    assert names - set(POLICY) == set(), "classify them in llamafactory/policy.py"
    assert set(POLICY) - names == set(), "no longer LLaMA-Factory arguments: drop them"


def test_special_arguments_and_their_rules_match() -> None:
    special = {name for name, rule in POLICY.items() if rule.treatment is Treatment.SPECIAL}

    assert special == set(SPECIAL_RULES)


def test_every_refusal_gives_a_reason_and_a_fix() -> None:
    for name, rule in POLICY.items():
        if rule.treatment in (Treatment.OWNED, Treatment.REFUSED):
            assert rule.why, name
            assert rule.fix, name


def test_an_argument_the_table_does_not_know_is_refused() -> None:
    # What a LLaMA-Factory upgrade adding an argument looks like to the trainer.
    current = load_schema()
    upgraded = ArgumentSchema(
        llamafactory_version="9.9.9",
        transformers_version=current.transformers_version,
        arguments=(
            *current.arguments,
            ArgumentSpec(
                name="shiny_new_flag", group="ModelArguments", kind="bool", type_text="bool"
            ),
        ),
    )

    with pytest.raises(InvalidArgument) as caught:
        validate_arguments({"shiny_new_flag": True}, schema=upgraded)

    assert caught.value.field == "shiny_new_flag"
    assert "'shiny_new_flag' is refused" in caught.value.message
    assert "does not classify it yet" in caught.value.message
    assert rule_for("shiny_new_flag") is policy.UNCLASSIFIED


def test_the_trainers_own_arguments_skip_the_policy() -> None:
    # The effective arguments the trainer writes (paths, a resume checkpoint) are its own.
    trusted = validate_arguments(
        {"output_dir": "/state/jobs/x/output", "resume_from_checkpoint": "/state/x/checkpoint-2"},
        allow_trainer_owned=True,
    )

    assert trusted["resume_from_checkpoint"] == "/state/x/checkpoint-2"


def test_refusals_name_the_trainers_settings() -> None:
    assert TrainerSettings.env_var("trust_remote_code") == policy.TRUST_REMOTE_CODE_SETTING
    assert TrainerSettings.env_var("allowed_reporters") == policy.ALLOWED_REPORTERS_SETTING
    assert TrainerSettings.env_var("max_steps_cap") == policy.MAX_STEPS_CAP_SETTING
    assert TrainerSettings.env_var("max_job_seconds") == policy.MAX_JOB_SECONDS_SETTING


def test_the_default_settings_are_the_safe_policy() -> None:
    assert TrainerSettings().job_policy() == JobPolicy()
    assert JobPolicy().allowed_reporters == frozenset()
    assert not JobPolicy().trust_remote_code


# --- special rules


@pytest.mark.parametrize(
    "value", ["none", "tensorboard", ["none"], ["tensorboard"]], ids=lambda v: repr(v)
)
def test_local_loggers_are_allowed(value: Any) -> None:
    assert validate_arguments({"report_to": value}) == {"report_to": value}


def test_network_loggers_need_the_operator() -> None:
    assert "'wandb'" in refusal({"report_to": ["wandb"]}).message
    assert "every logger installed" in refusal({"report_to": "all"}).message
    assert "not a logger" in refusal({"report_to": "carrier_pigeon"}).message
    allowed = JobPolicy(allowed_reporters=frozenset({"trackio"}))
    arguments = {"report_to": "trackio", "project": "p", "trackio_space_id": "me/space"}
    assert validate_arguments(arguments, policy=allowed) == arguments
    assert refusal({"project": "p"}).field == "project"


def test_remote_code_needs_the_operator_and_false_is_always_fine() -> None:
    assert validate_arguments({"trust_remote_code": False}) == {"trust_remote_code": False}
    assert refusal({"trust_remote_code": True}).field == "trust_remote_code"
    trusting = JobPolicy(trust_remote_code=True)
    assert validate_arguments({"trust_remote_code": True}, policy=trusting)


def test_settings_of_objects_take_no_path() -> None:
    error = refusal({"fsdp_config": "/etc/fsdp.json"})
    assert error.field == "fsdp_config"
    assert "reads no file a job names" in error.message
    parsed = validate_arguments({"gradient_checkpointing_kwargs": '{"use_reentrant": false}'})
    assert parsed == {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    kwargs = {"lr_scheduler_kwargs": {"min_lr": 1e-6}}
    assert validate_arguments(kwargs) == kwargs


def test_a_refused_argument_is_refused_whatever_its_value() -> None:
    # The reason, not a type error, and null still means "not set".
    assert "tokens are never accepted" in refusal({"hub_token": 123}).message
    assert validate_arguments({"hub_token": None, "offload_folder": None}) == {}


# --- DeepSpeed


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("z3", "z3"),
        ("z2_offload", "z2_offload"),
        ("ds_z3_config.json", "z3"),
        ("examples/deepspeed/ds_z3_config.json", "z3"),
        ("./examples/deepspeed/ds_z2_offload_config.json", "z2_offload"),
        ("LLaMA-Factory/examples/deepspeed/ds_z0_config.json", "z0"),
        ("examples/deepspeed/ds_z3_offload_config.json", "z3_offload"),
    ],
)
def test_tutorial_deepspeed_files_name_the_trainers_configs(given: str, name: str) -> None:
    assert normalize_deepspeed(given) == name


@pytest.mark.parametrize(
    "given",
    [
        "/etc/passwd",
        "/opt/LLaMA-Factory/examples/deepspeed/ds_z3_config.json",
        "../examples/deepspeed/ds_z3_config.json",
        "configs/ds_z3_config.json",
        "examples/deepspeed/ds_z3_fp8_config.json",
        "z1",
    ],
)
def test_other_deepspeed_values_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="not one of the trainer's DeepSpeed configs"):
        normalize_deepspeed(given)


def test_an_inline_deepspeed_object_is_checked_key_by_key() -> None:
    given = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    assert normalize_deepspeed(given) == given
    assert normalize_deepspeed(json.dumps(given)) == given

    error = refusal(
        {
            "deepspeed": {
                "zero_optimization": {"stage": 3, "offload_param": {"nvme_path": "/mnt"}},
                "monitor_config": {"wandb": {"enabled": True, "project": "x"}},
                "flops_profiler": {"enabled": True, "output_file": "/etc/cron.d/x"},
            }
        }
    )
    assert error.field == "deepspeed"
    for key in (
        "deepspeed.zero_optimization.offload_param.nvme_path' is not accepted",
        "deepspeed.monitor_config.wandb.enabled'",
        "deepspeed.monitor_config.wandb.project' is not accepted",
        "deepspeed.flops_profiler' is not accepted",
    ):
        assert key in error.message


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_the_shipped_configs_pass_the_inline_check(name: str) -> None:
    config = shipped_config(name)

    assert config.zero_optimization is not None
    assert config.zero_optimization.stage == int(name[1])
    assert ("offload" in name) == (config.zero_optimization.offload_optimizer is not None)
    assert normalize_deepspeed(config.as_json()) == config.as_json()


def test_a_deepspeed_name_becomes_a_file_in_the_jobs_work_directory(tmp_path: Path) -> None:
    workspace = JobWorkspace(tmp_path, "ftjob-1")
    workspace.root.mkdir(parents=True)

    launched = launch_arguments({"deepspeed": "z3", "learning_rate": 1e-4}, workspace)

    assert launched == {"deepspeed": str(workspace.deepspeed), "learning_rate": 1e-4}
    written = json.loads(workspace.deepspeed.read_text())
    assert written == shipped_config("z3").as_json()
    assert written["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert launch_arguments({"learning_rate": 1e-4}, workspace) == {"learning_rate": 1e-4}


def test_an_inline_object_comes_back_from_the_job_record_with_its_integers(
    tmp_path: Path,
) -> None:
    # The job record keeps arguments in a Struct, where 3 becomes 3.0.
    struct = Struct()
    struct.update({"deepspeed": {"zero_optimization": {"stage": 3, "sub_group_size": 1e9}}})
    recorded = MessageToDict(struct)
    assert recorded["deepspeed"]["zero_optimization"]["stage"] == 3.0

    path = write_deepspeed_config(recorded["deepspeed"], tmp_path / "deepspeed.json")

    written = json.loads(path.read_text())
    assert written == {"zero_optimization": {"stage": 3, "sub_group_size": 1000000000}}
    assert isinstance(written["zero_optimization"]["stage"], int)
