"""LLaMA-Factory's YAML arguments as typed models (its keys, one to one).

The declared fields are what the embedded pipeline sets; :class:`TrainArguments` also takes any
other argument LLaMA-Factory's ``train`` accepts (checked against its own argument dataclasses,
see :mod:`~forgeline_trainer.llamafactory.settings`). Unknown keys are refused rather than passed
through, so a typo never silently trains with a default. These are the trainer's own arguments
(a job's, already through the allow-list of :mod:`~forgeline_trainer.llamafactory.policy` at
submission, plus the paths the trainer sets): only their types are checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from forgeline_trainer.llamafactory.settings import validate_arguments


class _LlamaFactoryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def write_yaml(self, path: Path) -> Path:
        """Write the YAML file ``llamafactory-cli`` reads; returns ``path``."""
        path.write_text(yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False))
        return path


class TrainArguments(_LlamaFactoryArgs):
    """``llamafactory-cli train`` arguments: the fields below, plus any other LLaMA-Factory
    training argument (``TrainArguments(..., pref_beta=0.1)``), converted to its declared type.

    Raises:
        InvalidArgument: an extra key LLaMA-Factory does not accept, or a value of the wrong type.
    """

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _check_extra_arguments(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = {key: value for key, value in data.items() if key not in cls.model_fields}
        if not extra:
            return data
        return data | validate_arguments(extra, allow_trainer_owned=True)

    model_name_or_path: str
    stage: Literal["sft", "pt", "dpo", "kto", "rm", "ppo"] = "sft"
    do_train: bool = True
    finetuning_type: Literal["lora", "full", "freeze"] = "lora"
    lora_target: str = "all"
    additional_target: str | None = None
    dataset: str
    dataset_dir: str
    #: None lets LLaMA-Factory parse the tokenizer's own chat template.
    template: str | None = None
    cutoff_len: int = 128
    overwrite_cache: bool = True
    output_dir: str
    overwrite_output_dir: bool = True
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    num_train_epochs: float | None = None
    learning_rate: float = 1e-4
    logging_steps: int = 1
    save_strategy: Literal["no", "steps", "epoch"] = "no"
    report_to: str = "none"
    seed: int = 42


class ExportArguments(_LlamaFactoryArgs):
    """``llamafactory-cli export`` arguments: merge an adapter into its base model."""

    model_name_or_path: str
    adapter_name_or_path: str
    template: str | None = None
    finetuning_type: Literal["lora"] = "lora"
    export_dir: str
    export_size: int = 1
    export_device: Literal["cpu", "auto"] = "cpu"
    export_legacy_format: bool = False
