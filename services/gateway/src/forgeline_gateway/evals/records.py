"""What the gateway stores about evals, their runs and each run's output items: small JSON
documents, one pydantic model each.

Records are versioned (``schema_version``) and ignore fields they do not know, so a record
written by a newer gateway still loads in an older one, and fields added later have defaults
(as the registry's manifests do). Testing criteria and data sources are kept as the plain JSON
they were given in (already checked), and parsed again when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TERMINAL",
    "CriterionCounts",
    "EvalRecord",
    "ModelUsage",
    "OutputRecord",
    "ResultCounts",
    "ResultRecord",
    "RunError",
    "RunRecord",
    "RunStatus",
    "SampleRecord",
]

RunStatus = Literal["queued", "in_progress", "completed", "failed", "canceled"]
#: Statuses a run never leaves.
TERMINAL: Final[frozenset[str]] = frozenset({"completed", "failed", "canceled"})

OutputStatus = Literal["pass", "fail", "error"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EvalRecord(_Record):
    """An eval: the shape of its rows and its testing criteria."""

    schema_version: Literal[1] = 1
    id: str
    name: str
    created_at: int
    updated_at: int
    metadata: dict[str, str] | None = None
    #: ``{"type": "custom", "item_schema": {...}, "include_sample_schema": bool}``.
    data_source_config: dict[str, Any]
    #: The graders' specifications, as given.
    testing_criteria: tuple[dict[str, Any], ...]

    @property
    def criteria_names(self) -> list[str]:
        return [str(spec["name"]) for spec in self.testing_criteria]


class RunError(_Record):
    code: str
    message: str


class ResultCounts(_Record):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class CriterionCounts(_Record):
    testing_criteria: str
    passed: int = 0
    failed: int = 0


class ModelUsage(_Record):
    model_name: str
    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class ResultRecord(_Record):
    """One grader's verdict on one row."""

    name: str
    type: str
    score: float
    passed: bool
    error: str | None = None


class SampleRecord(_Record):
    """What was asked of the model for one row and what it answered (for a run without a model,
    the row's own ``sample``)."""

    input: tuple[dict[str, Any], ...] = ()
    output: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    error: RunError | None = None
    temperature: float | None = None
    max_completion_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None


class OutputRecord(_Record):
    """The outcome of one row of a run."""

    schema_version: Literal[1] = 1
    id: str
    run_id: str
    eval_id: str
    created_at: int
    #: The row's position in the data source (from 0).
    index: int
    item: dict[str, Any]
    status: OutputStatus
    sample: SampleRecord
    results: tuple[ResultRecord, ...] = ()


class RunRecord(_Record):
    """A run of an eval: its data source, where it is, and its counts so far."""

    schema_version: Literal[1] = 1
    id: str
    eval_id: str
    name: str
    created_at: int
    metadata: dict[str, str] | None = None
    #: The data source as given (``jsonl`` or ``completions``).
    data_source: dict[str, Any]
    #: The deployed model sampled (``completions``); None for rows that bring their samples.
    model: str | None = None
    status: RunStatus = "queued"
    #: How many rows the data source has.
    rows: int = 0
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    per_testing_criteria_results: tuple[CriterionCounts, ...] = ()
    per_model_usage: tuple[ModelUsage, ...] = ()
    error: RunError | None = None
    finished_at: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def counted(self, output: OutputRecord) -> RunRecord:
        """This run with `output` added to its counts."""
        return self.model_copy(update=_counts(self, [output]))

    def recounted(self, criteria: Sequence[str], outputs: Iterable[OutputRecord]) -> RunRecord:
        """This run with its counts computed afresh from all its `outputs`."""
        empty = self.model_copy(
            update={
                "result_counts": ResultCounts(),
                "per_testing_criteria_results": tuple(
                    CriterionCounts(testing_criteria=name) for name in criteria
                ),
                "per_model_usage": (),
            }
        )
        return empty.model_copy(update=_counts(empty, list(outputs)))


def _counts(run: RunRecord, outputs: list[OutputRecord]) -> dict[str, Any]:
    counts = run.result_counts.model_dump()
    criteria = {c.testing_criteria: c.model_dump() for c in run.per_testing_criteria_results}
    usage = {u.model_name: u.model_dump() for u in run.per_model_usage}
    for output in outputs:
        counts["total"] += 1
        key = {"pass": "passed", "fail": "failed", "error": "errored"}[output.status]
        counts[key] += 1
        for result in output.results:
            if result.error is not None:
                continue
            entry = criteria.setdefault(
                result.name, {"testing_criteria": result.name, "passed": 0, "failed": 0}
            )
            entry["passed" if result.passed else "failed"] += 1
        sample = output.sample
        if run.model is not None and sample.model is not None:
            entry = usage.setdefault(sample.model, {"model_name": sample.model})
            for field in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
                entry[field] = entry.get(field, 0) + getattr(sample, field)
            entry["invocation_count"] = entry.get("invocation_count", 0) + 1
    return {
        "result_counts": ResultCounts(**counts),
        "per_testing_criteria_results": tuple(CriterionCounts(**c) for c in criteria.values()),
        "per_model_usage": tuple(ModelUsage(**u) for u in usage.values()),
    }
