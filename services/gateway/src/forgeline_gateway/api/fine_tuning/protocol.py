"""`/v1/fine_tuning/jobs` request and response bodies, after OpenAI's API reference
(https://platform.openai.com/docs/api-reference/fine-tuning) and the `openai` SDK's
``types/fine_tuning`` models, plus Forgeline's own options in one extra field, ``forgeline``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from forgeline_gateway.api.common import ModelName
from forgeline_kit.graders import GraderName

__all__ = [
    "Checkpoint",
    "CheckpointList",
    "CheckpointMetrics",
    "DeployOptions",
    "DpoHyperparameters",
    "FineTuningJob",
    "FineTuningJobCreate",
    "FineTuningJobEvent",
    "FineTuningJobEventList",
    "FineTuningJobList",
    "ForgelineOptions",
    "JobError",
    "JobStatus",
    "LoraOptions",
    "Method",
    "SupervisedHyperparameters",
    "TrainingStage",
]

Auto = Literal["auto"]
#: LLaMA-Factory's training stages reachable through the API (PPO needs a separately served
#: reward model and is refused by the trainer).
TrainingStage = Literal["sft", "dpo", "pt", "kto", "rm"]
#: Stages OpenAI's ``method.type: "supervised"`` can carry: each takes plain hyperparameters.
SUPERVISED_STAGES: frozenset[str] = frozenset({"sft", "pt", "kto", "rm"})
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
FileId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
#: OpenAI's metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ],
    Field(max_length=16),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupervisedHyperparameters(_Body):
    """Hyperparameters of a supervised job; ``"auto"`` lets Forgeline choose."""

    batch_size: Auto | Annotated[int, Field(ge=1, le=4096)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=1000)] = "auto"
    n_epochs: Auto | Annotated[int, Field(ge=1, le=10_000)] = "auto"


class DpoHyperparameters(SupervisedHyperparameters):
    """Hyperparameters of a DPO job: the supervised ones plus ``beta``."""

    beta: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"


class SupervisedMethod(_Body):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(_Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Body):
    """How the model is trained: ``supervised`` (SFT) or ``dpo`` (preference data)."""

    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @model_validator(mode="after")
    def _matching_block(self) -> Method:
        other = self.dpo if self.type == "supervised" else self.supervised
        if other is not None:
            raise ValueError(f"method.type is '{self.type}': give only the '{self.type}' block")
        return self


class LoraOptions(_Body):
    """LoRA settings (LLaMA-Factory's ``lora_rank``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target``, ``additional_target``)."""

    rank: int | None = Field(None, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    target: str | None = Field(None, min_length=1, max_length=512)
    additional_target: str | None = Field(None, min_length=1, max_length=512)


#: What a job's evaluation scores with when it names no graders. It may name any `GraderName`:
#: the Evals API's ``text_similarity`` metrics (``cosine`` needs embeddings the gateway has not)
#: and ``exact`` (``string_check`` equality).
DEFAULT_GRADERS: tuple[GraderName, ...] = ("rouge_l", "bleu")


class EvalOptions(_Body):
    """How a job's results are scored before anything is served: the base model and every
    artifact (the adapter on the base's deployment, each GGUF file) answer the validation
    file's prompts (else the training file's) through the backend that serves them, and each
    answer is scored against the file's own answer by each grader."""

    enabled: bool = Field(
        True,
        description="Evaluate (on by default when the job has a validation_file or this block).",
    )
    graders: list[GraderName] = Field(
        default_factory=lambda: list(DEFAULT_GRADERS), min_length=1, max_length=11
    )
    max_rows: int = Field(32, ge=1, le=1000, description="Rows of the file scored at most.")
    max_tokens: int = Field(64, ge=1, le=4096, description="Longest answer asked for.")
    pass_threshold: float = Field(
        0.5, ge=0, le=1, description="The score at which a row passes a similarity grader."
    )


class DeployRequirement(_Body):
    """The figure the served artifact must reach to be deployed (`deploy.require`): a grader's
    mean score at least `min`, or above the base model's by at least `beat_base_by`."""

    grader: GraderName
    min: float | None = Field(None, ge=0, le=1)
    beat_base_by: float | None = Field(None, ge=-1, le=1)

    @model_validator(mode="after")
    def _one_bound(self) -> DeployRequirement:
        if (self.min is None) == (self.beat_base_by is None):
            raise ValueError("deploy.require takes one of 'min' or 'beat_base_by'")
        return self


class DeployOptions(_Body):
    """Where the fine-tuned model is served once the job succeeds."""

    enabled: bool = Field(True, description="Deploy the result (false: only register it).")
    backend: Literal["llamacpp"] = Field(
        "llamacpp", description="The backend serving the quantized GGUF."
    )
    quantization: str = Field(
        "q8_0", min_length=1, max_length=32, description="Which of `quantizations` is served."
    )
    context_size: int = Field(2048, ge=128, le=1 << 20)
    serve: Literal["adapter", "merged"] = Field(
        "adapter",
        description="`adapter`: serve the job's GGUF adapter on the llama.cpp deployment that "
        "serves a GGUF of the base model (one process and one copy of the base for all its "
        "fine-tunes; without one, on such an Ollama deployment, as an Ollama model made from "
        "the base's with `ADAPTER`), when there is one and the adapter holds the merged "
        "model's quality: on the job's quality card (each grader's mean at most 0.02 below "
        "the merged GGUF's) when the job is evaluated, else its greedy answers agree with the "
        "merged model's on the job's prompts; otherwise the merged GGUF is served, and an "
        "event says why. `merged`: serve the merged GGUF (`quantization`) on processes of its "
        "own.",
    )
    alias: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9._-]*$",
        description="A registry alias (for example `production`) moved to the served GGUF "
        "version once it is deployed; with `require`, only when it is met.",
    )
    require: DeployRequirement | None = Field(
        None,
        description="Deploy only when the evaluation of the served GGUF (`quantization`) meets "
        'this, e.g. `{"grader": "rouge_l", "min": 0.3}` or `{"grader": "rouge_l", '
        '"beat_base_by": 0.0}`; otherwise the job succeeds with its versions registered and '
        "nothing deployed, and an event says which figure missed by how much.",
    )


class ForgelineOptions(_Body):
    """Forgeline's own options of a job (the ``forgeline`` field; from the SDK pass
    ``extra_body={"forgeline": {...}}``)."""

    finetuning_type: Literal["lora", "qlora", "full", "freeze"] = "lora"
    stage: TrainingStage | None = Field(
        None,
        description="LLaMA-Factory's training stage, for those OpenAI's `method` cannot name: "
        '`pt` (continued pre-training on `{"text": ...}` records), `kto` (answers labelled '
        "desirable or not by a boolean `kto_tag`), `rm` (a reward model on preference pairs; "
        "registered, not deployed). Default: `sft`, or `dpo` with `method.type: dpo`.",
    )
    lora: LoraOptions = Field(default_factory=LoraOptions)
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="LLaMA-Factory training arguments (learning_rate, cutoff_len, template, "
        "...) that the trainer's allow-list lets a job set (no paths, tokens or remote code; "
        "see docs/security.md); these win over the values derived from the hyperparameters.",
    )
    quantizations: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(
        default_factory=lambda: ["q8_0"],
        max_length=16,
        description="GGUF types made from the merged model (all from one f16 file).",
    )
    deploy: DeployOptions = Field(default_factory=DeployOptions)
    eval: EvalOptions | None = Field(
        None,
        description="Score the base and every artifact before deploying (see EvalOptions); "
        "a job with a validation_file is evaluated with the defaults unless "
        '`{"enabled": false}`.',
    )

    @model_validator(mode="after")
    def _served_quantization_is_made(self) -> ForgelineOptions:
        made = {q.lower() for q in self.quantizations}
        if self.deploy.enabled and self.deploy.quantization.lower() not in made | {"f16"}:
            raise ValueError(
                f"deploy.quantization '{self.deploy.quantization}' is not among quantizations "
                f"{sorted(made)}: add it there or pick one of them"
            )
        return self


class FineTuningJobCreate(_Body):
    """``POST /v1/fine_tuning/jobs``."""

    model: ModelName = Field(description="The base model: a model name in the registry.")
    training_file: FileId
    validation_file: FileId | None = None
    suffix: Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] | None = (
        None
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Metadata | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of `method`; still accepted."
    )
    integrations: list[Any] | None = Field(
        None, description="Accepted for compatibility; only null or an empty list."
    )
    forgeline: ForgelineOptions = Field(default_factory=ForgelineOptions)

    @model_validator(mode="after")
    def _one_hyperparameter_place(self) -> FineTuningJobCreate:
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give hyperparameters in 'method' or in 'hyperparameters', not both")
        if self.integrations:
            raise ValueError("integrations (wandb) are not supported by Forgeline")
        evaluation = self.evaluation()
        require = self.forgeline.deploy.require
        if require is not None and (evaluation is None or require.grader not in evaluation.graders):
            raise ValueError(
                f"forgeline.deploy.require names the grader '{require.grader}', which this job "
                "does not score: give a validation_file and forgeline.eval.graders with it"
            )
        stage = self.forgeline.stage
        if stage is not None and self.method is not None:
            allowed = {"dpo"} if self.method.type == "dpo" else SUPERVISED_STAGES
            if stage not in allowed:
                raise ValueError(
                    f"method.type '{self.method.type}' and forgeline.stage '{stage}' disagree: "
                    f"stage '{stage}' takes method.type "
                    f"'{'dpo' if stage == 'dpo' else 'supervised'}' (or no method)"
                )
        return self

    def evaluation(self) -> EvalOptions | None:
        """How the job's results are scored, or None when they are not: `forgeline.eval`, or
        its defaults for a job with a validation file."""
        options = self.forgeline.eval
        if options is None and self.validation_file is not None:
            options = EvalOptions()
        return options if options is not None and options.enabled else None

    def method_type(self) -> Literal["supervised", "dpo"]:
        if self.method is not None:
            return self.method.type
        return "dpo" if self.forgeline.stage == "dpo" else "supervised"

    def training_stage(self) -> TrainingStage:
        """The LLaMA-Factory stage the job trains with."""
        if self.forgeline.stage is not None:
            return self.forgeline.stage
        return "dpo" if self.method_type() == "dpo" else "sft"

    def effective_hyperparameters(self) -> SupervisedHyperparameters | DpoHyperparameters:
        """The hyperparameters from `method`, else from the deprecated field, else all auto."""
        if self.method is not None and self.method.type == "dpo":
            return (self.method.dpo or DpoMethod()).hyperparameters
        if self.method is not None:
            return (self.method.supervised or SupervisedMethod()).hyperparameters
        return self.hyperparameters or SupervisedHyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None


class MethodView(BaseModel):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class FineTuningJob(BaseModel):
    """The ``fine_tuning.job`` object, plus Forgeline's view of the pipeline."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: MethodView
    user_provided_suffix: str | None = None
    forgeline: dict[str, Any] = Field(
        default_factory=dict,
        description="Pipeline stage, trainer job, registered versions and deployment.",
    )


class HyperparametersPlan(BaseModel):
    """Forgeline: what a job created with the same body would train with, each "auto" decided
    (the console's new fine-tune form shows it), and the LLaMA-Factory arguments they become."""

    object: Literal["fine_tuning.hyperparameters"] = "fine_tuning.hyperparameters"
    n_epochs: int
    batch_size: int = Field(description="The effective batch: per device x accumulation.")
    learning_rate_multiplier: float
    beta: float | None = Field(None, description="DPO's beta; null for other methods.")
    arguments: dict[str, float | int] = Field(
        description="`num_train_epochs`, `per_device_train_batch_size`, "
        "`gradient_accumulation_steps` (when above 1), `learning_rate`, `pref_beta` (DPO)."
    )


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
