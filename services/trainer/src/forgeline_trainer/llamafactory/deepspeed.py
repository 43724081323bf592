"""A job's ``deepspeed`` argument: one of the trainer's own ZeRO configs, or a checked object.

LLaMA-Factory's tutorials point ``deepspeed`` at a JSON file of its source tree
(``examples/deepspeed/ds_z3_config.json``). Those files are not in the ``llamafactory`` package,
and a job may not name a file on the trainer's disk anyway, so the trainer ships configs of its
own under the same names (``deepspeed_configs/``: ZeRO stage 0, 2 and 3, the last two also with
CPU offload; written from DeepSpeed's configuration reference and transformers' DeepSpeed guide,
``"auto"`` wherever the HF Trainer fills the value in, and ZeRO-3 gathering 16-bit weights on
save so the result is an ordinary checkpoint) and reads the tutorials' paths as names of those.
A job may instead give the config inline, as an object: it is checked against
:class:`DeepSpeedConfig`, which admits batch sizes, precision, ZeRO (offloading to the CPU only)
and activation checkpointing, and refuses whatever names a path (NVMe offload, monitors' output
files, profilers, autotuning) or a service of its own (DeepSpeed's wandb/comet monitors).

At submission :func:`normalize_deepspeed` turns the value into the config's short name (``z3``)
or the checked object, which is what the job records; when training starts,
:func:`write_deepspeed_config` writes the JSON into the job's work directory and the run gets
that path.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "SHIPPED_CONFIGS",
    "DeepSpeedConfig",
    "normalize_deepspeed",
    "shipped_config",
    "write_deepspeed_config",
]

#: The configs the trainer ships: short name -> the file name LLaMA-Factory's examples use.
SHIPPED_CONFIGS: Final = {
    "z0": "ds_z0_config.json",
    "z2": "ds_z2_config.json",
    "z2_offload": "ds_z2_offload_config.json",
    "z3": "ds_z3_config.json",
    "z3_offload": "ds_z3_offload_config.json",
}
_CONFIG_DIR: Final = Path(__file__).with_name("deepspeed_configs")
_BY_FILE_NAME: Final = {file: name for name, file in SHIPPED_CONFIGS.items()}
#: Where tutorials keep them, relative to a LLaMA-Factory checkout.
_TUTORIAL_DIR: Final = ("examples", "deepspeed")

_WHAT_IS_ACCEPTED: Final = (
    "give one of the trainer's configs by name ("
    + ", ".join(SHIPPED_CONFIGS)
    + ", or LLaMA-Factory's file names such as examples/deepspeed/ds_z3_config.json) or an "
    "object with batch sizes, gradient_clipping, fp16/bf16, zero_optimization (offload to the "
    "CPU only), activation_checkpointing and disabled monitors; a path on the trainer's disk, "
    "NVMe offload and DeepSpeed's own loggers and profilers are refused"
)

Auto = Literal["auto"]


class _Strict(BaseModel):
    # Unknown keys are refused: DeepSpeed's many other sections include paths (nvme_path,
    # output_path, results_dir) and services (wandb, comet), and an allow-list cannot miss one.
    model_config = ConfigDict(extra="forbid")


class Fp16(_Strict):
    """``fp16``: mixed precision with dynamic loss scaling."""

    enabled: bool | Auto | None = None
    auto_cast: bool | None = None
    loss_scale: float | None = Field(None, ge=0)
    initial_scale_power: int | None = Field(None, ge=0)
    loss_scale_window: int | None = Field(None, ge=1)
    hysteresis: int | None = Field(None, ge=1)
    consecutive_hysteresis: bool | None = None
    min_loss_scale: float | None = Field(None, ge=0)


class Bf16(_Strict):
    """``bf16``: bfloat16 mixed precision."""

    enabled: bool | Auto | None = None
    immediate_grad_update: bool | None = None


class Offload(_Strict):
    """``offload_optimizer`` / ``offload_param``: to the CPU, never to an NVMe path."""

    device: Literal["cpu", "none"] | None = None
    pin_memory: bool | None = None
    ratio: float | None = Field(None, ge=0, le=1)
    buffer_count: int | None = Field(None, ge=1)
    fast_init: bool | None = None


class ZeroOptimization(_Strict):
    """``zero_optimization``: the ZeRO stage and its bucket sizes."""

    stage: int | None = Field(None, ge=0, le=3)
    allgather_partitions: bool | None = None
    allgather_bucket_size: int | Auto | None = None
    overlap_comm: bool | None = None
    reduce_scatter: bool | None = None
    reduce_bucket_size: int | Auto | None = None
    contiguous_gradients: bool | None = None
    round_robin_gradients: bool | None = None
    sub_group_size: int | None = Field(None, ge=1)
    load_from_fp32_weights: bool | None = None
    ignore_unused_parameters: bool | None = None
    offload_optimizer: Offload | None = None
    offload_param: Offload | None = None
    stage3_prefetch_bucket_size: int | Auto | None = None
    stage3_param_persistence_threshold: int | Auto | None = None
    stage3_max_live_parameters: int | None = Field(None, ge=0)
    stage3_max_reuse_distance: int | None = Field(None, ge=0)
    stage3_gather_16bit_weights_on_model_save: bool | None = None
    zero_hpz_partition_size: int | None = Field(None, ge=1)
    zero_quantized_weights: bool | None = None
    zero_quantized_gradients: bool | None = None


class ActivationCheckpointing(_Strict):
    """``activation_checkpointing``: DeepSpeed's activation partitioning switches."""

    partition_activations: bool | None = None
    cpu_checkpointing: bool | None = None
    contiguous_memory_optimization: bool | None = None
    number_checkpoints: int | None = Field(None, ge=1)
    synchronize_checkpoint_boundary: bool | None = None
    profile: bool | None = None


class Disabled(_Strict):
    """A DeepSpeed monitor, which may only be switched off (each writes files or reaches a
    service of its own; a job's loggers are ``report_to``)."""

    enabled: Literal[False] = False


class MonitorConfig(_Strict):
    """``monitor_config`` as LLaMA-Factory's example configs write it: every monitor off."""

    enabled: bool | None = None
    tag: str | None = None
    csv_monitor: Disabled | None = None
    tensorboard: Disabled | None = None
    wandb: Disabled | None = None
    comet: Disabled | None = None


class CommsConfig(_Strict):
    """``comms_config`` as LLaMA-Factory's example configs write it."""

    verbose: bool | None = None


class DeepSpeedConfig(_Strict):
    """The DeepSpeed config a job may give inline (the shipped ones pass it too)."""

    train_batch_size: int | Auto | None = None
    train_micro_batch_size_per_gpu: int | Auto | None = None
    gradient_accumulation_steps: int | Auto | None = None
    gradient_clipping: float | Auto | None = None
    steps_per_print: int | None = Field(None, ge=1)
    wall_clock_breakdown: bool | None = None
    prescale_gradients: bool | None = None
    gradient_predivide_factor: float | None = Field(None, gt=0)
    communication_data_type: Literal["fp16", "bf16", "fp32"] | None = None
    zero_allow_untested_optimizer: bool | None = None
    zero_force_ds_cpu_optimizer: bool | None = None
    fp16: Fp16 | None = None
    bf16: Bf16 | None = None
    zero_optimization: ZeroOptimization | None = None
    activation_checkpointing: ActivationCheckpointing | None = None
    comms_config: CommsConfig | None = None
    monitor_config: MonitorConfig | None = None

    def as_json(self) -> dict[str, Any]:
        """The config as DeepSpeed reads it (unset keys left out, DeepSpeed's defaults apply)."""
        return self.model_dump(exclude_none=True)


def shipped_config(name: str) -> DeepSpeedConfig:
    """The trainer's config ``name`` (a key of :data:`SHIPPED_CONFIGS`)."""
    path = _CONFIG_DIR / SHIPPED_CONFIGS[name]
    return DeepSpeedConfig.model_validate_json(path.read_text(encoding="utf-8"))


def _shipped_name(text: str) -> str | None:
    """The short name ``text`` stands for: ``z3``, ``ds_z3_config.json`` or a relative path
    ending in ``examples/deepspeed/ds_z3_config.json``; ``None`` for anything else."""
    if text in SHIPPED_CONFIGS:
        return text
    path = PurePosixPath(text)
    parts = [part for part in path.parts if part != "."]
    if path.is_absolute() or ".." in parts or not parts:
        return None
    directory = tuple(parts[:-1])
    if directory and directory[-2:] != _TUTORIAL_DIR:
        return None
    return _BY_FILE_NAME.get(parts[-1])


def _check_object(value: dict[str, Any]) -> DeepSpeedConfig:
    try:
        return DeepSpeedConfig.model_validate(value)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            where = ".".join(["deepspeed", *(str(part) for part in problem["loc"])])
            if problem["type"] == "extra_forbidden":
                problems.append(f"'{where}' is not accepted")
            else:
                problems.append(f"'{where}': {problem['msg']}")
        raise ValueError("; ".join(problems) + f" ({_WHAT_IS_ACCEPTED})") from error


def normalize_deepspeed(value: Any) -> str | dict[str, Any]:
    """What a job's ``deepspeed`` becomes in its arguments: a shipped config's short name, or
    the inline object, checked (a JSON object given as text is parsed first, as transformers
    does).

    Raises:
        ValueError: a path, an unknown name or an object with a key that is not accepted; the
            message says what is accepted.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"'deepspeed' is not a valid JSON object: {error}") from error
    if isinstance(value, dict):
        return _check_object(value).as_json()
    if isinstance(value, str):
        name = _shipped_name(value)
        if name is not None:
            return name
        raise ValueError(
            f"'deepspeed' is {value!r}, which is not one of the trainer's DeepSpeed configs: the "
            f"trainer reads no file a job names; {_WHAT_IS_ACCEPTED}"
        )
    raise ValueError(f"'deepspeed' must be a config name or an object; got {value!r}")


def write_deepspeed_config(value: Any, path: Path) -> Path:
    """Write the DeepSpeed config a job's (normalized) ``deepspeed`` names to ``path``, a file
    of the job's work directory, and return ``path``: what the run's ``deepspeed`` becomes.

    Raises:
        ValueError: ``value`` is not a config name or object (see :func:`normalize_deepspeed`).
    """
    normalized = normalize_deepspeed(value)
    # An object comes back through the job record's Struct, where every number is a double
    # (stage 3.0): validating it again gives DeepSpeed its integers back.
    config = (
        shipped_config(normalized)
        if isinstance(normalized, str)
        else DeepSpeedConfig.model_validate(normalized)
    )
    path.write_text(json.dumps(config.as_json(), indent=2) + "\n", encoding="utf-8")
    return path
