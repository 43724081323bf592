"""A job's work directory: where its inputs, outputs and its record of validation live.

``<state_dir>/jobs/<job id>/`` holds ``base/`` (the pulled base model), ``sources/`` (the pulled
dataset files), ``data/`` (what LLaMA-Factory reads, with the ``dataset_info.json`` the trainer
writes), ``output/`` (``llamafactory-cli train``'s output_dir, checkpoints included),
``merged/`` (the export), ``validated.json`` (what validation learnt, for registering after a
restart) and, for a DeepSpeed job, ``deepspeed.json`` (the config its ``deepspeed`` names, written
when training starts).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.arguments import TrainArguments
from forgeline_trainer.llamafactory.deepspeed import write_deepspeed_config

__all__ = [
    "DatasetRecord",
    "JobWorkspace",
    "Validated",
    "effective_arguments",
    "launch_arguments",
    "text_argument",
]

#: Files of ``output/`` that are not part of a registered result: the trainer's own pickles and
#: TensorBoard runs; checkpoint directories are left out separately.
_NOT_PUBLISHED: Final = frozenset({"training_args.bin", "runs"})


class DatasetRecord(BaseModel):
    """One dataset as validated: its registry version, digest and record count."""

    model_config = ConfigDict(frozen=True)

    name: str
    model: str
    version: int
    sha256: str
    format: str
    record_count: int
    evaluation: bool


class Validated(BaseModel):
    """What VALIDATING established, kept for the stages after it (and after a restart)."""

    model_config = ConfigDict(frozen=True)

    base_model: str
    base_version: int
    chat_template: str
    datasets: list[DatasetRecord]


class JobWorkspace:
    """The paths of one job's work directory."""

    def __init__(self, state_dir: Path, job_id: str) -> None:
        self.root = state_dir / "jobs" / job_id
        self.base = self.root / "base"
        self.sources = self.root / "sources"
        self.data = self.root / "data"
        self.output = self.root / "output"
        self.merged = self.root / "merged"
        self.publish = self.root / "publish"
        self.record = self.root / "validated.json"
        self.deepspeed = self.root / "deepspeed.json"

    def save_validated(self, validated: Validated) -> None:
        """Keep what validation learnt."""
        self.record.write_text(validated.model_dump_json(indent=2), encoding="utf-8")

    def load_validated(self) -> Validated | None:
        """What validation learnt; ``None`` when the record is gone."""
        if not self.record.is_file() or not self.base.is_dir():
            return None
        return Validated.model_validate_json(self.record.read_text(encoding="utf-8"))

    def publishable_output(self) -> Path:
        """A copy of ``output/`` without checkpoints and trainer internals (the registered
        adapter or model, with its loss log and plot)."""
        shutil.rmtree(self.publish, ignore_errors=True)
        self.publish.mkdir(parents=True)
        for entry in self.output.iterdir():
            if entry.name in _NOT_PUBLISHED or entry.name.startswith("checkpoint-"):
                continue
            if entry.is_file():
                shutil.copy2(entry, self.publish / entry.name)
        return self.publish


def effective_arguments(
    arguments: dict[str, Any], workspace: JobWorkspace, *, checkpoint_interval: int
) -> dict[str, Any]:
    """Every LLaMA-Factory argument of the run: the job's, the trainer's paths and defaults.
    Without ``template``, LLaMA-Factory parses the tokenizer's own chat template (so training
    and inference agree by construction)."""
    values = dict(arguments)
    values.update(
        model_name_or_path=str(workspace.base),
        dataset_dir=str(workspace.data),
        output_dir=str(workspace.output),
    )
    if "save_strategy" not in values:
        # Checkpoints are what a restarted trainer resumes from.
        values["save_strategy"] = "steps"
        values.setdefault("save_steps", checkpoint_interval)
    # Tokens seen is what tokens/s and trained_tokens are computed from; the loss plot is
    # registered with the result.
    values.setdefault("include_num_input_tokens_seen", True)
    values.setdefault("plot_loss", True)
    return TrainArguments(**values).model_dump(exclude_none=True)


def launch_arguments(arguments: dict[str, Any], workspace: JobWorkspace) -> dict[str, Any]:
    """``arguments`` (a job's effective ones) as the run gets them: a ``deepspeed`` config name
    or object is written to the job's ``deepspeed.json``, and the run is given that path (one
    the trainer owns: a job never names a file itself).

    Raises:
        ValueError: ``deepspeed`` is neither a shipped config's name nor an accepted object.
    """
    values = dict(arguments)
    if values.get("deepspeed") is not None:
        written = write_deepspeed_config(values["deepspeed"], workspace.deepspeed)
        values["deepspeed"] = str(written)
    return values


def text_argument(job: pb.Job, name: str) -> str:
    """A text argument of the job's effective arguments; empty when unset (reading a missing
    key of a Struct through ``fields[...]`` would add it)."""
    value = job.effective_arguments.fields.get(name)
    return "" if value is None else value.string_value
