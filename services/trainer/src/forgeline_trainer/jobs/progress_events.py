"""LLaMA-Factory's progress records and checkpoint directories as job events."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_trainer.llamafactory.progress import ProgressRecord

__all__ = ["checkpoint_of", "metrics_message", "metrics_of", "numeric", "saved_checkpoints"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_DECLARED = frozenset(ProgressRecord.model_fields) | {
    "current_steps",
    "lr",
    "throughput",
    "predict_loss",
}


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (JSON metrics hold strings and nulls too)."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


def metrics_of(record: ProgressRecord) -> pb.TrainingMetrics:
    """One ``trainer_log.jsonl`` record as the contract's TrainingMetrics."""
    extra = numeric({k: v for k, v in (record.model_extra or {}).items() if k not in _DECLARED})
    if record.reward is not None:
        extra["rewards/chosen"] = record.reward
    if record.accuracy is not None:
        extra["rewards/accuracies"] = record.accuracy
    return pb.TrainingMetrics(
        step=record.step,
        total_steps=record.total_steps,
        epoch=record.epoch or 0.0,
        loss=record.loss,
        learning_rate=record.learning_rate,
        tokens_per_second=record.tokens_per_second,
        eta=_duration(record.remaining_s),
        elapsed=_duration(record.elapsed_s),
        eval_loss=record.eval_loss,
        trained_tokens=record.total_tokens or 0,
        extra=extra,
    )


def metrics_message(metrics: pb.TrainingMetrics) -> str:
    """``Step 40/150: training loss=0.0123`` (OpenAI's event wording)."""
    parts = []
    if metrics.HasField("loss"):
        parts.append(f"training loss={metrics.loss:.4g}")
    if metrics.HasField("eval_loss"):
        parts.append(f"validation loss={metrics.eval_loss:.4g}")
    return f"Step {metrics.step}/{metrics.total_steps}: {', '.join(parts)}"


def _complete(directory: Path) -> bool:
    """Whether a checkpoint was fully written: its ``trainer_state.json`` (written last) reads
    as JSON (a run killed mid-write leaves it truncated)."""
    try:
        json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def saved_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints under ``output_dir``, by step."""
    found = []
    if output_dir.is_dir():
        for entry in output_dir.iterdir():
            match = _CHECKPOINT.match(entry.name)
            if match and _complete(entry):
                found.append((int(match[1]), entry))
    return sorted(found)


def checkpoint_of(job_id: str, step: int, directory: Path) -> pb.Checkpoint:
    """The Checkpoint message of a saved checkpoint, its figures from its trainer state."""
    state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    metrics: dict[str, float] = {}
    for entry in state.get("log_history", []):
        if "loss" in entry:
            metrics["train_loss"] = float(entry["loss"])
        if "eval_loss" in entry:
            metrics["eval_loss"] = float(entry["eval_loss"])
    created = Timestamp()
    created.FromDatetime(
        datetime.fromtimestamp((directory / "trainer_state.json").stat().st_mtime, UTC)
    )
    return pb.Checkpoint(
        id=f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",
        step=step,
        epoch=float(state.get("epoch") or 0.0),
        metrics=metrics,
        create_time=created,
    )
