"""What the pipeline persists about a job: what the user asked for, where the job is, and what
it produced.

These are the gateway's own stored records, not the API's bodies: the HTTP layer
(``api/fine_tuning/convert.py``) translates its request into a `JobRequest` and a `JobRecord`
back into OpenAI's job object, so an API field can be renamed without touching a
stored job. Like the registry's manifests, records are frozen, versioned (``schema_version``)
and ignore fields they do not know, so a record written by a newer gateway still loads in an
older one, and fields added later have defaults.

Jobs stored before records were versioned hold the API's request body itself under
``request`` (`FineTuningJobCreate` as it was then): `JobRecord` reads that layout too
(`_request_from_body`).
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgeline_gateway.fine_tuning.auto import (
    FinetuningType,
    RequestedHyperparameters,
    ResolvedHyperparameters,
    resolve,
)
from forgeline_registry_client.figures import describe_conversion_figures

__all__ = [
    "DEFAULT_GRADERS",
    "TERMINAL",
    "ArtifactQuality",
    "DeployGate",
    "DeploySettings",
    "EvalSettings",
    "EventRecord",
    "JobFailure",
    "JobRecord",
    "JobRequest",
    "LoraSettings",
    "Outputs",
    "Stage",
    "TrainingStage",
]

#: LLaMA-Factory's training stages a job can train with.
TrainingStage = Literal["sft", "dpo", "pt", "kto", "rm"]
#: The graders a job is scored with when it names none.
DEFAULT_GRADERS: tuple[str, ...] = ("rouge_l", "bleu")


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


class LoraSettings(_Record):
    """LoRA settings the job sets (LLaMA-Factory's ``lora_rank``, ``lora_alpha``...); None:
    LLaMA-Factory's default."""

    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target: str | None = None
    additional_target: str | None = None


class EvalSettings(_Record):
    """How a job's results are scored before anything is served (`quality.py`)."""

    #: The Evals API's graders (``rouge_l``, ``bleu``, ``exact``...).
    graders: tuple[str, ...] = DEFAULT_GRADERS
    #: Rows of the file scored at most.
    max_rows: int = 32
    #: Longest answer asked for.
    max_tokens: int = 64
    #: The score at which a row passes a similarity grader.
    pass_threshold: float = 0.5


class DeployGate(_Record):
    """The figure the served artifact must reach to be deployed: a grader's mean score at least
    `min`, or above the base model's by at least `beat_base_by` (one of them is set)."""

    grader: str
    min: float | None = None
    beat_base_by: float | None = None


class DeploySettings(_Record):
    """Where and how the fine-tuned model is served once the job succeeds."""

    #: False: the job only registers what it made.
    enabled: bool = True
    backend: str = "llamacpp"
    #: Which of the job's quantizations is served.
    quantization: str = "q8_0"
    context_size: int = 2048
    #: ``adapter``: the GGUF adapter on a shared base where it holds the merged model's
    #: quality; ``merged``: the merged GGUF on processes of its own.
    serve: Literal["adapter", "merged"] = "adapter"
    #: A registry alias moved to the served GGUF version once it is deployed.
    alias: str | None = None
    #: Deploy only when the evaluation of the served GGUF meets this.
    require: DeployGate | None = None


class JobRequest(_Record):
    """What the user asked a job to do, with what the request left implicit decided when the
    job was created (the method, the training stage, whether it is evaluated)."""

    schema_version: Literal[1] = 1
    #: The base model as the user named it (a registry model or a hub id).
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    #: The seed the user gave; the one the job trains with is `JobRecord.seed`.
    seed: int | None = None
    metadata: dict[str, str] | None = None
    #: OpenAI's method: ``dpo`` trains on preference pairs.
    method: Literal["supervised", "dpo"] = "supervised"
    training_stage: TrainingStage = "sft"
    #: As asked, each possibly "auto" (`JobRecord.hyperparameters` holds what they became).
    hyperparameters: RequestedHyperparameters = RequestedHyperparameters()
    finetuning_type: FinetuningType = "lora"
    lora: LoraSettings = LoraSettings()
    #: LLaMA-Factory arguments the job sets; they win over the hyperparameters' values.
    arguments: dict[str, Any] = Field(default_factory=dict)
    #: GGUF types made from the merged model.
    quantizations: tuple[str, ...] = ("q8_0",)
    deploy: DeploySettings = DeploySettings()
    #: How the job's results are scored; None: they are not.
    evaluation: EvalSettings | None = None


class JobFailure(_Record):
    """Why a job failed, as the user sees it (OpenAI's job ``error``)."""

    code: str
    message: str
    #: The request field at fault, when it is one.
    param: str | None = None


class ArtifactQuality(_Record):
    """One line of a job's quality card: what one artifact scored on the job's evaluation rows,
    asked through the backend that serves it."""

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
    #: its held-out text (the version's lineage metrics: `forgeline_registry_client.figures`).
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


class Outputs(_Record):
    """Registry references (``model:number``) of what the job made, and where it is served."""

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


class JobRecord(_Record):
    """One fine-tuning job as the gateway stores it."""

    schema_version: Literal[1] = 1
    id: str
    created_at: int
    owner: str
    request: JobRequest
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
    error: JobFailure | None = None
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
            self.request.hyperparameters,
            finetuning_type=self.request.finetuning_type,
            examples=None,
            model_bytes=0,
        )

    @model_validator(mode="before")
    @classmethod
    def _unversioned_request(cls, data: Any) -> Any:
        """A job stored before records were versioned holds the API's request body as its
        ``request``; a `JobRequest` always carries its ``schema_version``, which that body
        never had."""
        if isinstance(data, dict):
            request = data.get("request")
            if isinstance(request, dict) and "schema_version" not in request:
                return {**data, "request": _request_from_body(request)}
        return data

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


class EventRecord(_Record):
    """One event of a job, in OpenAI's terms."""

    schema_version: Literal[1] = 1
    job_id: str
    sequence: int
    created_at: int
    level: Literal["info", "warn", "error"]
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None = None


def _request_from_body(body: dict[str, Any]) -> JobRequest:
    """The `JobRequest` of a job stored before records were versioned, from the API's request
    body it held (``FineTuningJobCreate`` then: ``method``, the deprecated ``hyperparameters``,
    Forgeline's options under ``forgeline``). Its rules are the ones that body applied then, and
    stay as they are whatever the API becomes: they read what is already stored."""
    options: dict[str, Any] = body.get("forgeline") or {}
    method: dict[str, Any] | None = body.get("method")
    stage: TrainingStage | None = options.get("stage")
    if method is not None:
        kind = method.get("type", "supervised")
    else:
        kind = "dpo" if stage == "dpo" else "supervised"
    # The hyperparameters from `method`, else from the deprecated field; a DPO method's carry
    # beta (and only theirs: a job with no method trains with the supervised ones).
    if method is not None:
        block = method.get(kind) or {}
        hyper = dict(block.get("hyperparameters") or {})
        if kind == "dpo":
            hyper.setdefault("beta", "auto")
    else:
        hyper = dict(body.get("hyperparameters") or {})
        hyper.pop("beta", None)
    evaluation: dict[str, Any] | None = options.get("eval")
    if evaluation is None and body.get("validation_file") is not None:
        evaluation = {}
    return JobRequest(
        model=body["model"],
        training_file=body["training_file"],
        validation_file=body.get("validation_file"),
        suffix=body.get("suffix"),
        seed=body.get("seed"),
        metadata=body.get("metadata"),
        method=kind,
        training_stage=stage or ("dpo" if kind == "dpo" else "sft"),
        hyperparameters=RequestedHyperparameters.model_validate(hyper),
        finetuning_type=options.get("finetuning_type", "lora"),
        lora=LoraSettings.model_validate(options.get("lora") or {}),
        arguments=options.get("arguments") or {},
        quantizations=tuple(options.get("quantizations", ("q8_0",))),
        deploy=DeploySettings.model_validate(options.get("deploy") or {}),
        evaluation=(
            EvalSettings.model_validate(evaluation)
            if evaluation is not None and evaluation.get("enabled", True)
            else None
        ),
    )
