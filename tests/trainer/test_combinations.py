"""Impossible combinations are refused before training, with a message saying how to fix them."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetColumns, DatasetInfoEntry
from forgeline_trainer.llamafactory.combinations import DeviceKind, check_combinations

SFT = DatasetInfoEntry(file_name="sft.json")
PAIRS = DatasetInfoEntry(file_name="pairs.json", ranking=True)
KTO = DatasetInfoEntry(file_name="kto.json", columns=DatasetColumns(kto_tag="label"))
DATASETS = {"sft": SFT, "pairs": PAIRS, "kto": KTO}


def refusal(arguments: dict[str, Any], device: DeviceKind = "cpu") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        check_combinations(arguments, device=device, datasets=DATASETS)
    return caught.value


@pytest.mark.parametrize(
    "arguments",
    [
        {"stage": "sft", "dataset": "sft", "finetuning_type": "lora"},
        {"stage": "pt", "dataset": "sft"},
        {"stage": "dpo", "dataset": "pairs", "eval_dataset": "pairs"},
        {"stage": "rm", "dataset": "pairs"},
        {"stage": "kto", "dataset": "kto"},
    ],
)
def test_possible_combinations_pass(arguments: dict[str, Any]) -> None:
    check_combinations(arguments, device="cpu", datasets=DATASETS)


def test_qlora_on_cpu_is_refused_with_the_fix() -> None:
    error = refusal({"stage": "sft", "dataset": "sft", "quantization_bit": 4})

    assert error.field == "quantization_bit"
    assert "needs a CUDA GPU" in error.message
    assert "Remove 'quantization_bit' to train plain LoRA" in error.message


def test_qlora_on_a_gpu_passes() -> None:
    check_combinations(
        {"stage": "sft", "dataset": "sft", "quantization_bit": 4}, device="cuda", datasets=DATASETS
    )


def test_the_qlora_runtime_is_installed_beside_llamafactory() -> None:
    # LLaMA-Factory loads bitsandbytes only when a job quantizes, and does not depend on it:
    # without it every QLoRA job the check above accepts fails once training starts
    # (test_gpu.py runs one on a GPU host).
    assert importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_preference_stage_on_sft_data_is_refused(stage: str) -> None:
    error = refusal({"stage": stage, "dataset": "pairs,sft"})

    assert error.field == "dataset"
    assert f"stage '{stage}' trains on preference pairs, but dataset 'sft'" in error.message
    assert "'chosen' and 'rejected'" in error.message


def test_kto_without_labels_is_refused() -> None:
    error = refusal({"stage": "kto", "dataset": "sft"})

    assert "no 'kto_tag' column" in error.message


def test_sft_on_preference_data_is_refused() -> None:
    error = refusal({"stage": "sft", "dataset": "sft", "eval_dataset": "pairs"})

    assert error.field == "eval_dataset"
    assert "Use stage 'dpo'" in error.message


def test_missing_stage_and_ppo_are_refused() -> None:
    assert refusal({"dataset": "sft"}).field == "stage"
    assert "use 'dpo'" in refusal({"stage": "ppo", "dataset": "pairs"}).message


def test_a_dataset_the_job_does_not_have_is_named() -> None:
    error = refusal({"stage": "sft", "dataset": "alpaca_en_demo"})

    assert "dataset 'alpaca_en_demo' is not one of the job's datasets" in error.message
