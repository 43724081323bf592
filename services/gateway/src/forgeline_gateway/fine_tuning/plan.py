"""A fine-tuning job's request (`JobRequest`, what the API's request body became), as the
trainer's `JobSpec`.

OpenAI's hyperparameters, with each ``"auto"`` decided (`auto.py`), map onto LLaMA-Factory's
arguments (``n_epochs`` -> ``num_train_epochs``, ``batch_size`` -> ``per_device_train_batch_size``
and, for an "auto" batch past 4, ``gradient_accumulation_steps``, ``learning_rate_multiplier`` x
the fine-tuning type's base rate -> ``learning_rate``, DPO's ``beta`` -> ``pref_beta``);
the request's arguments (the API's ``forgeline.arguments``) may set any LLaMA-Factory argument
the trainer's allow-list lets a job set, and win. Checking the arguments is the trainer's job
(``SubmitJob`` with ``validate_only``, against ``llamafactory/policy.py``), so its fix-it
messages reach the user unchanged, as a 400 at creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.struct_pb2 import Struct

from forgeline_gateway.fine_tuning.auto import ResolvedHyperparameters
from forgeline_gateway.fine_tuning.records import JobRequest
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2

__all__ = ["DatasetFile", "trainer_spec"]

_STAGES: Final = {
    "sft": trainer_pb2.STAGE_SFT,
    "dpo": trainer_pb2.STAGE_DPO,
    "pt": trainer_pb2.STAGE_PT,
    "kto": trainer_pb2.STAGE_KTO,
    "rm": trainer_pb2.STAGE_RM,
}
_TYPES: Final = {
    "lora": trainer_pb2.FINETUNING_TYPE_LORA,
    "qlora": trainer_pb2.FINETUNING_TYPE_QLORA,
    "full": trainer_pb2.FINETUNING_TYPE_FULL,
    "freeze": trainer_pb2.FINETUNING_TYPE_FREEZE,
}


@dataclass(frozen=True)
class DatasetFile:
    """An uploaded file as the trainer reads it: where it is in the registry and its layout."""

    file_id: str
    source: common_pb2.ArtifactRef
    format: trainer_pb2.DatasetFormat.ValueType
    ranking: bool
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    #: How many records it holds; None when the file was uploaded before counts were kept.
    records: int | None = None


def trainer_spec(
    request: JobRequest,
    *,
    job_id: str,
    seed: int,
    base: common_pb2.VersionRef,
    template: str | None,
    hyperparameters: ResolvedHyperparameters,
    training: DatasetFile,
    validation: DatasetFile | None,
    metadata: dict[str, str],
) -> trainer_pb2.JobSpec:
    """The trainer job that carries out `request`, training with `hyperparameters` (the
    request's, with each "auto" decided)."""
    arguments: dict[str, Any] = {"seed": seed}
    if template:
        arguments["template"] = template
    arguments |= hyperparameters.arguments()
    lora = request.lora
    for name, value in (
        ("lora_rank", lora.rank),
        ("lora_alpha", lora.alpha),
        ("lora_dropout", lora.dropout),
        ("lora_target", lora.target),
        ("additional_target", lora.additional_target),
    ):
        if value is not None:
            arguments[name] = value
    arguments |= request.arguments
    struct = Struct()
    struct.update(arguments)
    return trainer_pb2.JobSpec(
        base_model=base,
        datasets=[_input(training, "train")],
        eval_datasets=[_input(validation, "validation")] if validation else [],
        stage=_STAGES[request.training_stage],
        finetuning_type=_TYPES[request.finetuning_type],
        arguments=struct,
        output=trainer_pb2.OutputOptions(
            labels={"fine_tuning_job": job_id}, description=f"fine-tuning job {job_id}"
        ),
        metadata=metadata,
    )


def _input(file: DatasetFile, name: str) -> trainer_pb2.DatasetInput:
    return trainer_pb2.DatasetInput(
        name=name,
        source=file.source,
        format=file.format,
        ranking=file.ranking,
        columns=dict(file.columns),
        tags=dict(file.tags),
    )
