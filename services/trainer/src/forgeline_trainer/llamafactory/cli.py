"""Run ``llamafactory-cli train`` and ``llamafactory-cli export`` and read what they wrote."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgeline_kit.subprocesses import ToolRun, run_tool
from forgeline_trainer.llamafactory.arguments import ExportArguments, TrainArguments
from forgeline_trainer.llamafactory.combinations import DeviceKind
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


def device_environment(
    env: Mapping[str, str], *, gpus: Sequence[str], device: DeviceKind
) -> dict[str, str]:
    """``env`` for a LLaMA-Factory process that may use only ``gpus`` (on a CUDA trainer), with
    the interpreter's ``bin`` first on ``PATH`` (where ``torchrun`` is, whether or not the
    trainer's environment has it on ``PATH``)."""
    values = dict(env)
    bindir = str(Path(sys.executable).parent)
    values["PATH"] = os.pathsep.join([bindir, values["PATH"]]) if values.get("PATH") else bindir
    if device == "cuda" and gpus:
        values["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return values


def launch_environment(
    env: Mapping[str, str], *, gpus: Sequence[str], device: DeviceKind, deepspeed: bool = False
) -> dict[str, str]:
    """The environment ``llamafactory-cli train`` needs to run on ``gpus``.

    The job sees exactly those GPUs (``CUDA_VISIBLE_DEVICES``), the ones the trainer gave it, so
    concurrent jobs never share a GPU and a one-GPU job on an 8-GPU host does not spread over all
    eight. LLaMA-Factory starts ``torchrun`` itself when ``FORCE_TORCHRUN`` is set or when it sees
    more than one GPU, with ``NPROC_PER_NODE`` processes, so more than one GPU runs torchrun with
    one process each. DeepSpeed also runs under torchrun only. (On the CPU, ``gpus`` only counts
    the processes: LLaMA-Factory runs gloo workers.)
    """
    values = device_environment(env, gpus=gpus, device=device)
    if len(gpus) > 1 or deepspeed:
        values["FORCE_TORCHRUN"] = "1"
        values["NPROC_PER_NODE"] = str(max(len(gpus), 1))
    return values


def start_training(
    args: TrainArguments,
    workdir: Path,
    env: Mapping[str, str],
    *,
    gpus: Sequence[str] = (),
    device: DeviceKind = "cpu",
) -> TrainingProcess:
    """Start ``llamafactory-cli train`` in its own process group and return at once; follow it
    with a :class:`~forgeline_trainer.llamafactory.progress.ProgressReader` on
    ``args.output_dir``, stop it with :meth:`TrainingProcess.cancel`. Output goes to
    ``workdir/train.log``. On more than one of ``gpus`` it runs under torchrun (see
    :func:`launch_environment`); cancelling still stops every worker (one process group)."""
    config = args.write_yaml(workdir / "train.yaml")
    deepspeed = bool((args.model_extra or {}).get("deepspeed"))
    return TrainingProcess(
        [LLAMAFACTORY_CLI, "train", config],
        log_path=workdir / "train.log",
        env=launch_environment(env, gpus=gpus, device=device, deepspeed=deepspeed),
    )


def export(args: ExportArguments, workdir: Path, env: Mapping[str, str]) -> ToolRun:
    """Merge an adapter into its base model with ``llamafactory-cli export``."""
    config = args.write_yaml(workdir / "export.yaml")
    return run_tool("llamafactory-cli export", [LLAMAFACTORY_CLI, "export", config], env=env)
