"""Follow a running LLaMA-Factory training through the ``trainer_log.jsonl`` it writes.

LLaMA-Factory's ``LogCallback`` appends one JSON object per logging step to
``<output_dir>/trainer_log.jsonl`` (``current_steps``, ``total_steps``, ``loss``, ``lr``,
``epoch``, ``elapsed_time`` and ``remaining_time`` as ``H:MM:SS``, ``throughput`` in tokens/s,
``total_tokens``, and for preference stages ``reward`` and ``accuracy``). :class:`ProgressReader`
reads the lines added since its last call, so a job's watcher turns each into an event.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TRAINER_LOG = "trainer_log.jsonl"

_DURATION = re.compile(
    r"^(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$"
)


class ProgressRecord(BaseModel):
    """One line of ``trainer_log.jsonl``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    step: int = Field(alias="current_steps")
    total_steps: int
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = Field(None, alias="lr")
    epoch: float | None = None
    percentage: float | None = None
    elapsed_time: str | None = None
    remaining_time: str | None = None
    tokens_per_second: float | None = Field(None, alias="throughput")
    total_tokens: int | None = None
    reward: float | None = None
    accuracy: float | None = None

    @property
    def elapsed_s(self) -> float | None:
        """Time spent training so far, in seconds."""
        return parse_duration(self.elapsed_time)

    @property
    def remaining_s(self) -> float | None:
        """LLaMA-Factory's estimate of the time left, in seconds."""
        return parse_duration(self.remaining_time)


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``str(datetime.timedelta)`` text (``"0:01:05"``, ``"1 day, 2:00:00"``);
    ``None`` for empty or unrecognised text."""
    match = _DURATION.match(text.strip()) if text else None
    if match is None:
        return None
    days = int(match["days"] or 0)
    return days * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


class ProgressReader:
    """Reads the records a run appended to ``trainer_log.jsonl`` since the last :meth:`read`.

    A line still being written (no newline yet) is left for the next call; a line that is not a
    progress record (LLaMA-Factory writes evaluation-only lines too) is skipped.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / TRAINER_LOG
        self._offset = 0

    def read(self) -> list[ProgressRecord]:
        """The complete records added since the previous call, oldest first."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return []
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return []
        self._offset += len(complete) + 1
        records = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                records.append(ProgressRecord.model_validate(json.loads(line)))
            except (json.JSONDecodeError, ValidationError):
                continue
        return records
