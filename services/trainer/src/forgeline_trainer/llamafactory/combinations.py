"""Refuse argument combinations that cannot train, before any time is spent on them.

Each check answers with what is wrong and how to fix it, in the user's terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any, Final, Literal

from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetInfoEntry

DeviceKind = Literal["cpu", "cuda"]

#: Stages that train on preference pairs (chosen/rejected): LLaMA-Factory reads their data as
#: ``ranking`` datasets.
PREFERENCE_STAGES = frozenset({"dpo", "rm"})


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported in this trainer's environment (LLaMA-Factory's runs
    use the same one)."""
    return find_spec(module) is not None


def check_combinations(
    arguments: Mapping[str, Any],
    *,
    device: DeviceKind,
    datasets: Mapping[str, DatasetInfoEntry],
    installed: Callable[[str], bool] = is_installed,
) -> None:
    """Raise :class:`InvalidArgument` for the first impossible combination in validated
    ``arguments`` on ``device`` with the named ``datasets`` (their ``dataset_info`` entries);
    ``installed`` says which optional packages the runs can import."""
    _check_stage(arguments)
    _check_quantization(arguments, device)
    _check_deepspeed(arguments, device, installed)
    _check_reporters_installed(arguments, installed)
    _check_data_fits_stage(arguments, datasets)


def _check_stage(arguments: Mapping[str, Any]) -> None:
    if "stage" not in arguments:
        raise InvalidArgument(
            "no training stage: set 'stage' to one of sft, pt, dpo, kto, rm", field="stage"
        )
    if arguments["stage"] == "ppo":
        raise InvalidArgument(
            "stage 'ppo' is not supported by this trainer: LLaMA-Factory's PPO trainer only "
            f"runs with trl 0.8.6 to 0.9.6 (it refuses to start otherwise), this trainer has "
            f"trl {_version('trl')}; and PPO scores each generated answer with a separately "
            "trained reward model (its 'reward_model' argument, a local path) that the trainer "
            "does not pull from the registry. Instead, use 'dpo' on the same preference data (or "
            "'kto' on labelled answers): neither needs a reward model. A reward model itself "
            "trains with stage 'rm'",
            field="stage",
        )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def _check_quantization(arguments: Mapping[str, Any], device: DeviceKind) -> None:
    bits = arguments.get("quantization_bit")
    if bits is None or device != "cpu":
        return
    raise InvalidArgument(
        f"quantization_bit={bits} (QLoRA) needs a CUDA GPU: bitsandbytes quantizes on the GPU and "
        "this trainer has none. Remove 'quantization_bit' to train plain LoRA on the CPU, or "
        "submit the job to a trainer with a GPU",
        field="quantization_bit",
    )


def _check_deepspeed(
    arguments: Mapping[str, Any], device: DeviceKind, installed: Callable[[str], bool]
) -> None:
    if arguments.get("deepspeed") is None:
        return
    if device == "cpu":
        raise InvalidArgument(
            "deepspeed (ZeRO) shards training over CUDA GPUs, and this trainer has none. Remove "
            "'deepspeed' to train on the CPU, or submit the job to a trainer with GPUs",
            field="deepspeed",
        )
    # Refused here rather than minutes later, when the run imports it and fails.
    if not installed("deepspeed"):
        raise InvalidArgument(
            "deepspeed is not installed in this trainer (it is not part of the trainer image). "
            "Remove 'deepspeed' to train without ZeRO, or ask the operator for a trainer with "
            "DeepSpeed installed",
            field="deepspeed",
        )


#: The module each logger of ``report_to`` needs (transformers' integrations import these).
_REPORTER_MODULES: Final[Mapping[str, tuple[str, ...]]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
}


def _check_reporters_installed(
    arguments: Mapping[str, Any], installed: Callable[[str], bool]
) -> None:
    value = arguments.get("report_to")
    names = [value] if isinstance(value, str) else list(value or [])
    for name in names:
        if name == "none":
            continue
        modules = _REPORTER_MODULES.get(name, (name,))
        if not any(installed(module) for module in modules):
            raise InvalidArgument(
                f"report_to names '{name}', but {modules[0]} is not installed in this trainer, "
                "so the run would fail when it starts. Use report_to: none (the loss curve and "
                "metrics are kept by Forgeline either way), or ask the operator for a trainer "
                f"with {modules[0]} installed",
                field="report_to",
            )


def _check_data_fits_stage(
    arguments: Mapping[str, Any], datasets: Mapping[str, DatasetInfoEntry]
) -> None:
    stage = arguments["stage"]
    for key in ("dataset", "eval_dataset"):
        for name in _names(arguments.get(key)):
            entry = datasets.get(name)
            if entry is None:
                known = ", ".join(sorted(datasets)) or "none"
                raise InvalidArgument(
                    f"{key} '{name}' is not one of the job's datasets ({known})", field=key
                )
            _check_entry(stage, name, entry, key)


def _check_entry(stage: str, name: str, entry: DatasetInfoEntry, key: str) -> None:
    if stage in PREFERENCE_STAGES and not entry.ranking:
        raise InvalidArgument(
            f"stage '{stage}' trains on preference pairs, but dataset '{name}' is not a "
            "preference dataset. Give records with 'chosen' and 'rejected' answers and mark the "
            "dataset ranking, or train it with stage 'sft'",
            field=key,
        )
    if stage == "kto" and (entry.columns is None or entry.columns.kto_tag is None):
        raise InvalidArgument(
            f"stage 'kto' needs each record labelled desirable or not, but dataset '{name}' has "
            "no 'kto_tag' column. Add a boolean field to each record and map it as the kto_tag "
            "column, or use stage 'dpo' with chosen/rejected pairs",
            field=key,
        )
    if stage in ("sft", "pt") and entry.ranking:
        raise InvalidArgument(
            f"dataset '{name}' holds preference pairs, which stage '{stage}' cannot train on. "
            "Use stage 'dpo' (or 'rm') for it, or give plain answers",
            field=key,
        )


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(part).strip() for part in value]
    raise InvalidArgument(f"dataset names must be text, got {value!r}", field="dataset")
