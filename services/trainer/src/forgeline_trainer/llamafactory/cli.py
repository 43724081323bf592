"""Run ``llamafactory-cli train`` and ``llamafactory-cli export`` and read what they wrote."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from forgeline_kit.subprocesses import ToolRun, run_tool
from forgeline_trainer.llamafactory.arguments import ExportArguments, TrainArguments
from forgeline_trainer.llamafactory.process import TrainingProcess

#: The console script installed beside this interpreter by the ``llamafactory`` package.
LLAMAFACTORY_CLI = Path(sys.executable).with_name("llamafactory-cli")


@dataclass(frozen=True)
class TrainResult:
    """A finished training run: where the adapter is and how the loss went."""

    output_dir: Path
    losses: list[float]
    run: ToolRun


def read_losses(output_dir: Path) -> list[float]:
    """The logged training losses, in order, from LLaMA-Factory's ``trainer_log.jsonl``."""
    log = output_dir / "trainer_log.jsonl"
    if not log.is_file():
        return []
    entries = (json.loads(line) for line in log.read_text().splitlines() if line.strip())
    return [float(entry["loss"]) for entry in entries if "loss" in entry]


def train(args: TrainArguments, workdir: Path, env: Mapping[str, str]) -> TrainResult:
    """Train with LLaMA-Factory; the YAML it reads is kept in ``workdir`` for the record."""
    config = args.write_yaml(workdir / "train.yaml")
    run = run_tool("llamafactory-cli train", [LLAMAFACTORY_CLI, "train", config], env=env)
    output_dir = Path(args.output_dir)
    return TrainResult(output_dir=output_dir, losses=read_losses(output_dir), run=run)


def start_training(args: TrainArguments, workdir: Path, env: Mapping[str, str]) -> TrainingProcess:
    """Start ``llamafactory-cli train`` in its own process group and return at once; follow it
    with a :class:`~forgeline_trainer.llamafactory.progress.ProgressReader` on
    ``args.output_dir``, stop it with :meth:`TrainingProcess.cancel`. Output goes to
    ``workdir/train.log``."""
    config = args.write_yaml(workdir / "train.yaml")
    return TrainingProcess(
        [LLAMAFACTORY_CLI, "train", config], log_path=workdir / "train.log", env=env
    )


def export(args: ExportArguments, workdir: Path, env: Mapping[str, str]) -> ToolRun:
    """Merge an adapter into its base model with ``llamafactory-cli export``."""
    config = args.write_yaml(workdir / "export.yaml")
    return run_tool("llamafactory-cli export", [LLAMAFACTORY_CLI, "export", config], env=env)
