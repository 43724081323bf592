"""What SubmitJob checks before a job is queued, without fetching anything.

:func:`plan_job` turns a ``JobSpec`` (arguments as a Struct, or a LLaMA-Factory YAML as its examples
write it) into a :class:`JobPlan`: LLaMA-Factory arguments checked against its own dataclasses and
converted to their types, then against the trainer's argument allow-list under the operator's
:class:`~forgeline_trainer.llamafactory.policy.JobPolicy` (which also bounds the job's time
limit), the stage and fine-tuning type agreed between the spec's fields and the arguments, the
datasets named, and impossible combinations refused — every refusal an
:class:`~forgeline_kit.errors.InvalidArgument` naming the field and the fix. Checks that need the
data (records, the tokenizer's chat template) run later, in the job's VALIDATING state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetColumns, DatasetInfoEntry, DatasetTags
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2
from forgeline_trainer.llamafactory.combinations import (
    DeviceKind,
    check_combinations,
    is_installed,
)
from forgeline_trainer.llamafactory.policy import MAX_JOB_SECONDS_SETTING, JobPolicy
from forgeline_trainer.llamafactory.settings import parse_yaml, validate_arguments

#: In YAML mode these trainer-owned paths are tolerated (LLaMA-Factory's example YAMLs always
#: write them) and replaced by the trainer's own; the others are refused as in argument mode.
YAML_REPLACED_PATHS: Final = frozenset({"output_dir", "logging_dir", "dataset_dir"})

_STAGES: Final = {
    trainer_pb2.STAGE_SFT: "sft",
    trainer_pb2.STAGE_PT: "pt",
    trainer_pb2.STAGE_DPO: "dpo",
    trainer_pb2.STAGE_KTO: "kto",
    trainer_pb2.STAGE_RM: "rm",
    trainer_pb2.STAGE_PPO: "ppo",
}
_FINETUNING: Final = {
    trainer_pb2.FINETUNING_TYPE_LORA: "lora",
    trainer_pb2.FINETUNING_TYPE_QLORA: "lora",
    trainer_pb2.FINETUNING_TYPE_FULL: "full",
    trainer_pb2.FINETUNING_TYPE_FREEZE: "freeze",
}
_FORMATS: Final = {
    trainer_pb2.DATASET_FORMAT_ALPACA: DatasetFormat.ALPACA,
    trainer_pb2.DATASET_FORMAT_SHAREGPT: DatasetFormat.SHAREGPT,
    trainer_pb2.DATASET_FORMAT_PRETRAIN_TEXT: DatasetFormat.PRETRAIN_TEXT,
    trainer_pb2.DATASET_FORMAT_OPENAI_CHAT: DatasetFormat.OPENAI_CHAT,
    trainer_pb2.DATASET_FORMAT_OPENAI_PREFERENCE: DatasetFormat.OPENAI_PREFERENCE,
}
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]+$")
#: QLoRA's default when the spec says QLORA and the arguments do not pick a width.
DEFAULT_QUANTIZATION_BIT: Final = 4


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset of a job, as it will be fetched, checked and written to dataset_info.json."""

    name: str
    source: common_pb2.ArtifactRef
    format: DatasetFormat
    ranking: bool
    columns: DatasetColumns
    tags: DatasetTags
    num_samples: int | None
    evaluation: bool


@dataclass(frozen=True)
class JobPlan:
    """A job that passed every check SubmitJob can make."""

    #: LLaMA-Factory arguments, typed, without the trainer's paths.
    arguments: dict[str, Any]
    #: The base model: the spec's ``base_model``, or a YAML's ``model_name_or_path`` as text.
    base_model: common_pb2.VersionRef | str
    datasets: tuple[DatasetPlan, ...]


def _check_gpu_count(gpu_count: int, device: DeviceKind, available: int | None) -> None:
    if gpu_count < 0:
        raise InvalidArgument(
            f"gpu_count={gpu_count} is negative; use 0 or more", field="gpu_count"
        )
    if gpu_count > 0 and device == "cpu":
        raise InvalidArgument(
            f"gpu_count={gpu_count} asks for GPUs, but this trainer runs on the CPU and has none; "
            "leave it 0 to train on the CPU, or submit the job to a trainer with GPUs",
            field="gpu_count",
        )
    if available is not None and gpu_count > available:
        raise InvalidArgument(
            f"gpu_count={gpu_count} asks for more GPUs than this trainer has ({available}); "
            f"ask for at most {available}, or 0 for the trainer's default",
            field="gpu_count",
        )


def _check_time_limit(spec: trainer_pb2.JobSpec, policy: JobPolicy) -> None:
    if not spec.HasField("time_limit"):
        return
    seconds = spec.time_limit.ToTimedelta().total_seconds()
    if seconds < 0:
        raise InvalidArgument(
            f"time_limit is negative ({seconds:g} s); give a positive duration, or leave it unset "
            f"for the trainer's limit of {policy.max_job_seconds:g} s",
            field="time_limit",
        )
    if seconds > policy.max_job_seconds:
        raise InvalidArgument(
            f"time_limit is {seconds:g} s, above this trainer's limit of "
            f"{policy.max_job_seconds:g} s ({MAX_JOB_SECONDS_SETTING}); ask for at most that, or "
            "ask the operator to raise it",
            field="time_limit",
        )


def plan_job(
    spec: trainer_pb2.JobSpec,
    *,
    device: DeviceKind,
    gpus_available: int | None = None,
    policy: JobPolicy | None = None,
    installed: Callable[[str], bool] = is_installed,
) -> JobPlan:
    """Check ``spec`` for a trainer running on ``device`` (with ``gpus_available`` GPUs, when
    known: a job asking for more is refused), under the operator's ``policy`` (the safe defaults
    when ``None``: no remote code, no network loggers, the default step cap and time limit).
    ``installed`` says which optional packages (DeepSpeed, loggers) the runs can import.

    Raises:
        InvalidArgument: naming the field at fault and how to fix it.
    """
    policy = policy or JobPolicy()
    raw, yaml_model = _raw_arguments(spec)
    arguments = validate_arguments(raw, policy=policy)
    _agree(arguments, "stage", _STAGES.get(spec.stage), "stage")
    _agree(arguments, "finetuning_type", _FINETUNING.get(spec.finetuning_type), "finetuning_type")
    arguments.setdefault("finetuning_type", "lora")
    if spec.finetuning_type == trainer_pb2.FINETUNING_TYPE_QLORA:
        arguments.setdefault("quantization_bit", DEFAULT_QUANTIZATION_BIT)
    _check_gpu_count(spec.gpu_count, device, gpus_available)
    _check_time_limit(spec, policy)
    _check_metadata(spec)

    datasets = tuple(
        [_dataset(entry, f"datasets[{i}]", False) for i, entry in enumerate(spec.datasets)]
        + [_dataset(e, f"eval_datasets[{i}]", True) for i, e in enumerate(spec.eval_datasets)]
    )
    if not any(not plan.evaluation for plan in datasets):
        raise InvalidArgument("a job needs at least one training dataset", field="datasets")
    names = [plan.name for plan in datasets]
    if len(set(names)) != len(names):
        raise InvalidArgument("dataset names must be unique within a job", field="datasets")
    arguments.setdefault("dataset", ",".join(p.name for p in datasets if not p.evaluation))
    evaluation = [p.name for p in datasets if p.evaluation]
    if evaluation:
        arguments.setdefault("eval_dataset", ",".join(evaluation))
    entries = {
        plan.name: DatasetInfoEntry(
            file_name=plan.name,
            ranking=plan.ranking,
            columns=plan.columns,
            # OpenAI layouts reach LLaMA-Factory as sharegpt (the trainer converts them).
            formatting="alpaca"
            if plan.format in (DatasetFormat.ALPACA, DatasetFormat.PRETRAIN_TEXT)
            else "sharegpt",
        )
        for plan in datasets
    }
    check_combinations(arguments, device=device, datasets=entries, installed=installed)

    base_model: common_pb2.VersionRef | str
    if spec.HasField("base_model"):
        if yaml_model is not None:
            raise InvalidArgument(
                "the base model is given twice: drop model_name_or_path from the YAML or "
                "base_model from the spec",
                field="base_model",
            )
        base_model = spec.base_model
    elif yaml_model is not None:
        base_model = yaml_model
    else:
        raise InvalidArgument(
            "no base model: set base_model to a registry version", field="base_model"
        )
    return JobPlan(arguments=arguments, base_model=base_model, datasets=datasets)


def _raw_arguments(spec: trainer_pb2.JobSpec) -> tuple[dict[str, Any], str | None]:
    """The arguments as given, and the YAML's ``model_name_or_path`` when there is one."""
    if spec.WhichOneof("config") != "llamafactory_yaml":
        raw: dict[str, Any] = MessageToDict(spec.arguments) if spec.HasField("arguments") else {}
        return raw, None
    raw = parse_yaml(spec.llamafactory_yaml)
    model = raw.pop("model_name_or_path", None)
    for key in YAML_REPLACED_PATHS:
        raw.pop(key, None)
    # Any other argument the trainer owns or refuses is refused by validate_arguments, with the
    # rest of the YAML's problems.
    if model is not None and not isinstance(model, str):
        raise InvalidArgument(
            "model_name_or_path must be a registry reference such as 'tiny-llama:3'",
            field="model_name_or_path",
        )
    # A tutorial's YAML may write the reference as a URL: registry://tiny-llama:3.
    return raw, None if model is None else model.removeprefix("registry://")


def _agree(arguments: dict[str, Any], key: str, from_spec: str | None, field: str) -> None:
    if from_spec is None:
        return
    given = arguments.setdefault(key, from_spec)
    if given != from_spec:
        raise InvalidArgument(
            f"the spec says {field} '{from_spec}' but the arguments say '{given}'; "
            "keep one of them",
            field=field,
        )


def _dataset(entry: trainer_pb2.DatasetInput, field: str, evaluation: bool) -> DatasetPlan:
    name = entry.name or PurePosixPath(entry.source.path).stem
    if not name or not _NAME.match(name):
        raise InvalidArgument(
            f"dataset name {name!r} must be letters, digits, '_' and '-' (set 'name')",
            field=f"{field}.name",
        )
    if not entry.HasField("source"):
        raise InvalidArgument(f"dataset '{name}' has no source", field=f"{field}.source")
    if entry.format not in _FORMATS:
        wanted = trainer_pb2.DatasetFormat.Name(entry.format)
        raise InvalidArgument(
            f"dataset '{name}': format {wanted} is not supported; use ALPACA, SHAREGPT, "
            "OPENAI_CHAT, OPENAI_PREFERENCE or PRETRAIN_TEXT",
            field=f"{field}.format",
        )
    try:
        columns = DatasetColumns.model_validate(dict(entry.columns))
        tags = DatasetTags.model_validate(dict(entry.tags))
    except ValidationError as error:
        unknown = ", ".join(str(problem["loc"][0]) for problem in error.errors())
        raise InvalidArgument(
            f"dataset '{name}': unknown column or tag {unknown}", field=f"{field}.columns"
        ) from error
    return DatasetPlan(
        name=name,
        source=entry.source,
        format=_FORMATS[entry.format],
        # OpenAI preference data is preference data whatever the flag says.
        ranking=entry.ranking or entry.format == trainer_pb2.DATASET_FORMAT_OPENAI_PREFERENCE,
        columns=columns,
        tags=tags,
        num_samples=entry.num_samples or None,
        evaluation=evaluation,
    )


def _check_metadata(spec: trainer_pb2.JobSpec) -> None:
    if len(spec.metadata) > 16:
        raise InvalidArgument("metadata holds at most 16 pairs", field="metadata")
    for key, value in spec.metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidArgument(
                f"metadata '{key[:64]}': keys hold up to 64 and values up to 512 characters",
                field="metadata",
            )
