"""What the pipeline persists about a job: its request, where it is, and what it produced."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate, JobError
from forgeline_gateway.fine_tuning.auto import ResolvedHyperparameters, resolve
from forgeline_registry.figures import describe_conversion_figures

__all__ = ["TERMINAL", "ArtifactQuality", "EventRecord", "JobRecord", "Outputs", "Stage"]


class Stage(enum.StrEnum):
    """Where a job is in the pipeline. Each stage is resumable: its work is keyed by the job id
    (idempotent trainer and converter requests, deployment by name), so redoing it after a
    restart finds what was already done."""

    VALIDATING_FILES = "validating_files"
    TRAINING = "training"
    CONVERTING = "converting"
    EVALUATING = "evaluating"
    DEPLOYING = "deploying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Stage.SUCCEEDED, Stage.FAILED, Stage.CANCELLED})


class ArtifactQuality(BaseModel):
    """One line of a job's quality card: what one artifact scored on the job's evaluation rows,
    asked through the backend that serves it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: ``base``, ``adapter`` or a GGUF file type (``f16``, ``q8_0``...).
    artifact: str
    #: The registry version scored (``model:number``); for ``adapter``, the adapter served on
    #: the base: the GGUF adapter (llama.cpp, Ollama) or the HF/PEFT adapter (vLLM).
    version: str | None = None
    #: Grader -> mean score over the rows it could score (0 to 1).
    scores: dict[str, float] = Field(default_factory=dict)
    #: Grader -> rows at or above the pass threshold.
    passed: dict[str, int] = Field(default_factory=dict)
    rows: int = 0
    #: Rows the model could not answer or a grader could not score.
    errored: int = 0
    #: The Evals API's eval and run that hold each row's answer and scores.
    eval_id: str = ""
    run_id: str = ""
    #: Why this artifact has no scores (its run failed, it could not be served).
    error: str | None = None
    #: For a GGUF file, what the converter measured against the full-precision intermediate on
    #: its held-out text (the version's lineage metrics: `forgeline_registry.figures`).
    conversion: dict[str, float] = Field(default_factory=dict)

    def describe(self) -> str:
        """``q8_0 (ft-x:3): rouge_l 0.8123, bleu 0.6012 on 8 rows; perplexity 12.31 (full
        precision 12.30), KL divergence 0.0017, same top token 98.4%``, for the job's events."""
        what = f"{self.artifact} ({self.version})" if self.version else self.artifact
        measured = describe_conversion_figures(self.conversion)
        measured = f"; {measured}" if measured else ""
        if self.error:
            return f"{what}: not measured ({self.error}){measured}"
        figures = ", ".join(f"{grader} {score:.4f}" for grader, score in self.scores.items())
        return f"{what}: {figures} on {self.rows} rows{measured}"


class Outputs(BaseModel):
    """Registry references (``model:number``) of what the job made, and where it is served."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = None
    merged: str | None = None
    trained_model: str | None = None
    gguf: dict[str, str] = Field(default_factory=dict, description="file type -> reference")
    gguf_adapter: str | None = None
    deployment: str | None = None
    #: How `deployment` is served: the GGUF adapter on a shared base, or the merged GGUF.
    served_as: Literal["adapter", "merged"] | None = None
    #: With `served_as` adapter: the base deployment whose processes apply it.
    base_deployment: str | None = None
    #: The adapter check's identical greedy answers of those compared (``7/8``), when it ran.
    agreement: str | None = None
    #: The quality card: the base and each artifact scored (`forgeline.eval`), in that order.
    quality: list[ArtifactQuality] = Field(default_factory=list)
    #: `deploy.require`: whether the served artifact met it, and the figures.
    gate: Literal["met", "missed"] | None = None
    gate_reason: str | None = None

    def registered(self) -> list[str]:
        """Every registered reference, last made first (the order to delete them in)."""
        refs = [self.gguf_adapter, *reversed(list(self.gguf.values()))]
        refs += [self.merged, self.trained_model, self.adapter]
        return [ref for ref in refs if ref]


class JobRecord(BaseModel):
    """One fine-tuning job as the gateway stores it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created_at: int
    owner: str
    request: FineTuningJobCreate
    fine_tuned_model: str
    seed: int
    #: The base version (``MODEL:N``) resolved when the job was created, and its training template.
    base_version: str
    template: str | None = None
    stage: Stage = Stage.VALIDATING_FILES
    #: The trainer's own state name while training (QUEUED, TRAINING, EXPORTING...).
    trainer_state: str = ""
    trainer_job_id: str = ""
    trainer_last_sequence: int = 0
    cancel_requested: bool = False
    outputs: Outputs = Field(default_factory=Outputs)
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    finished_at: int | None = None
    error: JobError | None = None
    # The fields below came with retries (issue 18); records stored before have their defaults.
    #: Where a FAILED job stopped: the stage a retry runs again.
    failed_stage: Stage | None = None
    #: How many times a failed stage was started afresh (a retry by the user, or the pipeline's
    #: after a conversion could not reach the registry): the trainer's and converter's request
    #: ids of a stage run afresh carry it, so the work is new rather than the failed one found.
    retries: int = 0
    #: Per conversion request id, the last converter event mirrored as a job event, so a stream
    #: replayed after a restart does not repeat the conversion's retry events.
    conversion_sequences: dict[str, int] = Field(default_factory=dict)
    #: The hyperparameters the job trains with, each "auto" decided at creation (sized by the
    #: training file and the base model); None on jobs stored before, which keep the old
    #: constants.
    hyperparameters: ResolvedHyperparameters | None = None

    def resolved_hyperparameters(self) -> ResolvedHyperparameters:
        """`hyperparameters`, or for a job stored before they were kept, what it trained with."""
        if self.hyperparameters is not None:
            return self.hyperparameters
        return resolve(
            self.request.effective_hyperparameters(),
            finetuning_type=self.request.forgeline.finetuning_type,
            examples=None,
            model_bytes=0,
        )

    def request_id(self, name: str = "") -> str:
        """The trainer's (no ``name``) or converter's (``gguf``, ``lora``) request id of the
        job's current run of a stage."""
        base = f"{self.id}-{name}" if name else self.id
        return f"{base}-retry-{self.retries}" if self.retries else base

    @property
    def status(
        self,
    ) -> Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]:
        """The OpenAI status."""
        if self.stage in TERMINAL:
            return self.stage.value  # type: ignore[return-value]
        if self.stage is Stage.VALIDATING_FILES:
            return "validating_files"
        if self.stage is Stage.TRAINING and self.trainer_state in ("", "QUEUED"):
            return "queued"
        if self.stage is Stage.TRAINING and self.trainer_state == "VALIDATING":
            return "validating_files"
        return "running"


class EventRecord(BaseModel):
    """One event of a job, in OpenAI's terms."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    sequence: int
    created_at: int
    level: Literal["info", "warn", "error"]
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None = None
