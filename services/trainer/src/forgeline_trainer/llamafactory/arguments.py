"""LLaMA-Factory's YAML arguments as typed models (its keys, one to one).

These cover what the embedded pipeline sets today; unknown keys are refused rather than passed
through, so a typo never silently trains with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict


class _LlamaFactoryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def write_yaml(self, path: Path) -> Path:
        """Write the YAML file ``llamafactory-cli`` reads; returns ``path``."""
        path.write_text(yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False))
        return path


class TrainArguments(_LlamaFactoryArgs):
    """``llamafactory-cli train`` arguments."""

    model_name_or_path: str
    stage: Literal["sft", "pt", "dpo", "kto", "rm", "ppo"] = "sft"
    do_train: bool = True
    finetuning_type: Literal["lora", "full", "freeze"] = "lora"
    lora_target: str = "all"
    additional_target: str | None = None
    dataset: str
    dataset_dir: str
    template: str
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
    template: str
    finetuning_type: Literal["lora"] = "lora"
    export_dir: str
    export_size: int = 1
    export_device: Literal["cpu", "auto"] = "cpu"
    export_legacy_format: bool = False
