"""A real, short LLaMA-Factory run through the trainer's checks: DPO on the tiny preference set.

The job's path in miniature: the dataset is checked record by record, the trainer writes
``dataset_info.json``, the arguments are checked against LLaMA-Factory's own and against the
stage, then ``llamafactory-cli train`` runs a few DPO steps on the CPU in its own process group
while its progress is followed through ``trainer_log.jsonl``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from forgeline_kit.datasets import (
    DatasetFormat,
    DatasetSpec,
    validate_dataset,
    write_dataset_info,
)
from forgeline_kit.tinymodel import LLAMAFACTORY_TEMPLATE, TinyModel, demo_dataset
from forgeline_trainer.llamafactory.arguments import TrainArguments
from forgeline_trainer.llamafactory.chat_template import check_chat_template
from forgeline_trainer.llamafactory.cli import read_losses, start_training
from forgeline_trainer.llamafactory.combinations import check_combinations
from forgeline_trainer.llamafactory.progress import ProgressReader, ProgressRecord


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dpo_on_the_tiny_preference_set_trains(
    tiny_model: TinyModel, offline_env: dict[str, str], tmp_path: Path
) -> None:
    demo = demo_dataset("forgeline_alpaca_preference")
    assert demo.info.columns is not None
    pairs = DatasetSpec(
        name="pairs",
        path=demo.path(),
        format=DatasetFormat.ALPACA,
        ranking=True,
        columns=demo.info.columns,
    )
    assert validate_dataset(pairs) == 4
    info = write_dataset_info(tmp_path / "data", [pairs])
    arguments = TrainArguments(
        model_name_or_path=str(tiny_model.path),
        stage="dpo",
        dataset="pairs",
        dataset_dir=str(info.parent),
        template=LLAMAFACTORY_TEMPLATE,
        output_dir=str(tmp_path / "adapter"),
        per_device_train_batch_size=2,
        max_steps=2,
        pref_beta=0.1,  # a DPO argument TrainArguments does not declare
        pref_loss="sigmoid",
    )
    check_combinations(
        arguments.model_dump(exclude_none=True),
        device="cpu",
        datasets={"pairs": pairs.info_entry("pairs.json")},
    )
    check_chat_template(tiny_model.path, LLAMAFACTORY_TEMPLATE)

    started = time.monotonic()
    run = start_training(arguments, tmp_path, offline_env)
    reader = ProgressReader(tmp_path / "adapter")
    progress: list[ProgressRecord] = []
    while run.poll() is None:
        assert time.monotonic() - started < 500, run.log_tail()
        progress += reader.read()
        time.sleep(0.2)
    progress += reader.read()
    took = time.monotonic() - started

    assert run.poll() == 0, run.log_tail()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # One record per logging step, then LLaMA-Factory's end-of-training summary (no loss).
    steps = [record for record in progress if record.loss is not None]
    assert [(record.step, record.total_steps) for record in steps] == [(1, 2), (2, 2)]
    assert all(record.loss is not None and math.isfinite(record.loss) for record in steps)
    assert steps[-1].accuracy is not None  # DPO's rewards/accuracies comes through
    assert [record.loss for record in steps] == read_losses(tmp_path / "adapter")
    assert progress[-1].percentage == 100
    print(f"dpo: {took:.1f} s, progress {[r.model_dump() for r in progress]}")
