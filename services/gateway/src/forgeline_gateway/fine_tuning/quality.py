"""A fine-tuning job's quality card and deployment gate: its artifacts scored through the Evals
API before anything is served.

The pipeline's EVALUATING stage (when the job has a validation file or `forgeline.eval`) asks the
base model and each artifact — the adapter on the base's deployment (its GGUF adapter on
llama.cpp or Ollama, its HF/PEFT adapter on vLLM), each GGUF file on a deployment of its own —
the evaluation rows' prompts, greedily, and scores each answer against the file's own answer
with the job's graders. Each artifact is one run of one eval, so every answer and score stays
readable through ``client.evals.runs.output_items.list``. The mean per grader is the
artifact's line of the card. `deploy.require` is then checked against the line of
the GGUF the job would serve.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any, Final

from forgeline_gateway.evals.records import OutputRecord
from forgeline_gateway.evals.service import EvalService
from forgeline_gateway.files.service import FileService
from forgeline_gateway.fine_tuning.agreement import examples_of
from forgeline_gateway.fine_tuning.records import ArtifactQuality, DeployGate, EvalSettings

__all__ = [
    "ADAPTER_TOLERANCE",
    "QualityCheck",
    "adapter_verdict",
    "check_requirement",
    "quality_labels",
]

_ITEM_SCHEMA: Final = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "reference": {"type": "string"}},
    "required": ["messages", "reference"],
}
_PAGE: Final = 100
#: How far below the merged GGUF's mean score an adapter's may fall, per grader, and the adapter
#: still be served in its place (`adapter_verdict`). Scores run from 0 to 1; on the few rows a
#: card has, a difference this small is one row's answer differing by a word or two.
ADAPTER_TOLERANCE: Final = 0.02
#: Registry labels of a scored version: ``quality.rouge_l=0.8123``.
LABEL_PREFIX: Final = "quality."


def _criterion(grader: str, threshold: float) -> dict[str, Any]:
    common = {"name": grader, "input": "{{sample.output_text}}", "reference": "{{item.reference}}"}
    if grader == "exact":
        return common | {"type": "string_check", "operation": "eq"}
    return common | {
        "type": "text_similarity",
        "evaluation_metric": grader,
        "pass_threshold": threshold,
    }


class QualityCheck:
    """Evaluation rows from the Files API, runs on the gateway's Evals API."""

    def __init__(self, files: FileService, evals: EvalService) -> None:
        self.files = files
        self.evals = evals

    async def rows(self, file_id: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` eval rows of the fine-tuning file `file_id`:
        ``{"item": {"messages": PROMPT, "reference": ANSWER}}``."""
        layout = (await self.files.resolve(file_id)).layout
        async with self.files.content(file_id) as (_, path):
            examples = await asyncio.to_thread(
                examples_of,
                path,
                layout.format,
                columns=layout.columns,
                tags=layout.tags,
                limit=limit,
            )
        return [{"item": {"messages": prompt, "reference": answer}} for prompt, answer in examples]

    async def open_eval(self, job_id: str, options: EvalSettings) -> str:
        """A new eval with the job's graders as its testing criteria; its id."""
        record = await self.evals.create_eval(
            name=f"{job_id} quality",
            metadata={"fine_tuning_job": job_id},
            data_source_config={"type": "custom", "item_schema": _ITEM_SCHEMA},
            testing_criteria=[_criterion(g, options.pass_threshold) for g in options.graders],
        )
        return record.id

    async def score(
        self,
        eval_id: str,
        *,
        artifact: str,
        version: str | None,
        model: str,
        rows: list[dict[str, Any]],
        options: EvalSettings,
    ) -> ArtifactQuality:
        """The deployed `model`'s line of the card: one run of `eval_id` on `rows`."""
        run = await self.evals.create_run(
            eval_id,
            name=artifact,
            metadata={"artifact": artifact},
            data_source={
                "type": "completions",
                "model": model,
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                "source": {"type": "file_content", "content": rows},
                "sampling_params": {
                    "temperature": 0,
                    "seed": 0,
                    "max_completion_tokens": options.max_tokens,
                },
            },
        )
        run = await self.evals.finished_run(eval_id, run.id)
        line = ArtifactQuality(artifact=artifact, version=version, eval_id=eval_id, run_id=run.id)
        if run.status != "completed":
            reason = run.error.message if run.error else f"the run ended {run.status}"
            return line.model_copy(update={"error": reason})
        outputs = await self._outputs(eval_id, run.id)
        scores: dict[str, float] = {}
        passed: dict[str, int] = {}
        for grader in options.graders:
            results = [r for o in outputs for r in o.results if r.name == grader and not r.error]
            if results:
                scores[grader] = statistics.fmean(r.score for r in results)
                passed[grader] = sum(r.passed for r in results)
        return line.model_copy(
            update={
                "scores": scores,
                "passed": passed,
                "rows": len(outputs),
                "errored": sum(o.status == "error" for o in outputs),
            }
        )

    async def _outputs(self, eval_id: str, run_id: str) -> list[OutputRecord]:
        found: list[OutputRecord] = []
        after: str | None = None
        while True:
            page, more = await self.evals.list_outputs(
                eval_id, run_id, after=after, limit=_PAGE, order="asc", status=None
            )
            found += page
            if not more or not page:
                return found
            after = page[-1].id


def check_requirement(
    require: DeployGate, card: list[ArtifactQuality], served: str
) -> tuple[bool, str]:
    """Whether the card's line for `served` (a GGUF file type) meets `require`, and the figures
    that say so (or what is missing)."""
    lines = {line.artifact: line for line in card}
    grader = require.grader
    line = lines.get(served)
    score = line.scores.get(grader) if line else None
    if score is None:
        return False, f"{grader} of the served {served} GGUF could not be measured"
    if require.min is not None:
        if score >= require.min:
            return True, f"{grader} of {served} is {score:.4f}, at least the required {require.min}"
        return False, (
            f"{grader} of {served} is {score:.4f}, below the required {require.min} "
            f"(short by {require.min - score:.4f})"
        )
    assert require.beat_base_by is not None
    base = lines.get("base")
    base_score = base.scores.get(grader) if base else None
    if base_score is None:
        return False, f"{grader} of the base model could not be measured to compare with"
    margin = score - base_score
    needed = require.beat_base_by
    said = f"{grader} of {served} is {score:.4f} against the base model's {base_score:.4f}"
    if margin >= needed:
        return True, f"{said} (ahead by {margin:.4f}, at least {needed} required)"
    short = needed - margin
    return False, f"{said}: ahead by {margin:.4f} where {needed} is required (short by {short:.4f})"


def adapter_verdict(card: list[ArtifactQuality], served: str) -> tuple[bool, str] | None:
    """Whether the GGUF adapter holds the quality of the merged `served` GGUF on the card: every
    grader's mean within `ADAPTER_TOLERANCE` below the merged one's (or above it), and the
    figures; None when the card did not score both."""
    lines = {line.artifact: line for line in card if line.scores and not line.error}
    adapter, merged = lines.get("adapter"), lines.get(served)
    if adapter is None or merged is None:
        return None
    graders = [grader for grader in merged.scores if grader in adapter.scores]
    if not graders:
        return None
    short = [g for g in graders if adapter.scores[g] < merged.scores[g] - ADAPTER_TOLERANCE]
    figures = ", ".join(
        f"{g} {adapter.scores[g]:.4f} against {merged.scores[g]:.4f}" for g in graders
    )
    said = (
        f"on its quality card the adapter scores {figures} of the merged {served} GGUF, where "
        f"{ADAPTER_TOLERANCE} below it is tolerated"
    )
    if short:
        said += f"; short on {', '.join(short)}"
    return not short, said


def quality_labels(line: ArtifactQuality) -> dict[str, str]:
    """The registry labels recording `line` on its version: ``quality.<grader>`` -> score."""
    return {f"{LABEL_PREFIX}{grader}": f"{score:.4f}" for grader, score in line.scores.items()}
