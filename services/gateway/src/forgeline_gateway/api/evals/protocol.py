"""Evals API bodies, shaped like OpenAI's (https://platform.openai.com/docs/api-reference/evals;
the official SDK's ``openai.types.eval_*`` and ``openai.types.evals``).

Requests are typed for the documentation and the first checks; what OpenAI's API has and this
gateway does not run (other grader types, data source configs and sources) still parses, into
the catch-all models, so the evals domain can refuse it by name, saying why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from forgeline_kit.graders import TextSimilarityMetric

__all__ = [
    "CompletionsDataSource",
    "Eval",
    "EvalCreate",
    "EvalDeleted",
    "EvalList",
    "EvalUpdate",
    "JsonlDataSource",
    "OutputItem",
    "OutputItemList",
    "Run",
    "RunCreate",
    "RunDeleted",
    "RunList",
]

Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16, description="Up to 16 string pairs (keys ≤ 64, values ≤ 512 chars)."),
]


class _Open(BaseModel):
    """A request object that keeps fields it does not know (the domain names them)."""

    model_config = ConfigDict(extra="allow")


def _tag(known: tuple[str, ...]) -> Any:
    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return kind if kind in known else "other"

    return Discriminator(tag)


# --- data source config -----------------------------------------------------------------------


class CustomDataSourceConfig(_Open):
    type: Literal["custom"]
    item_schema: dict[str, Any] = Field(description="The JSON schema of each row's `item`.")
    include_sample_schema: bool = Field(
        False, description="Whether rows come with a `sample` (the answer graded)."
    )


class OtherDataSourceConfig(_Open):
    """`logs`, `stored_completions`: refused (the gateway stores no completions)."""

    type: str


DataSourceConfig = Annotated[
    Annotated[CustomDataSourceConfig, Tag("custom")]
    | Annotated[OtherDataSourceConfig, Tag("other")],
    _tag(("custom",)),
]

# --- testing criteria -------------------------------------------------------------------------


class StringCheckGrader(_Open):
    """1 when the rendered `input` and `reference` compare as `operation` says, else 0."""

    type: Literal["string_check"]
    name: str
    input: str = Field(description="A template, such as `{{sample.output_text}}`.")
    reference: str = Field(description="A template, such as `{{item.answer}}`.")
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Open):
    """A similarity score from 0 to 1; the row passes at `pass_threshold` or above."""

    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    # OpenAI's metrics: ``cosine`` parses here, so that the grader refuses it saying why.
    evaluation_metric: Literal["cosine", TextSimilarityMetric] = Field(
        description="`cosine` is refused; `meteor` needs WordNet installed (see README)."
    )
    pass_threshold: float = Field(allow_inf_nan=False)


class OtherGrader(_Open):
    """`label_model`, `score_model`, `python`, `multi`: refused, each with its reason."""

    type: str


TestingCriterion = Annotated[
    Annotated[StringCheckGrader, Tag("string_check")]
    | Annotated[TextSimilarityGrader, Tag("text_similarity")]
    | Annotated[OtherGrader, Tag("other")],
    _tag(("string_check", "text_similarity")),
]


class EvalCreate(BaseModel):
    """`POST /v1/evals`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    data_source_config: DataSourceConfig
    testing_criteria: Annotated[list[TestingCriterion], Field(min_length=1)]


class EvalUpdate(BaseModel):
    """`POST /v1/evals/{eval_id}`: a new name, or new metadata (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=256)
    metadata: Metadata | None = None


# --- run data sources -------------------------------------------------------------------------


class SourceRow(_Open):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Open):
    type: Literal["file_content"]
    content: Annotated[list[SourceRow], Field(min_length=1)]


class FileIdSource(_Open):
    type: Literal["file_id"]
    id: str = Field(description="A file uploaded with purpose `evals`.")


class OtherSource(_Open):
    """`stored_completions`, `responses`: refused (the gateway stores neither)."""

    type: str


Source = Annotated[
    Annotated[FileContentSource, Tag("file_content")]
    | Annotated[FileIdSource, Tag("file_id")]
    | Annotated[OtherSource, Tag("other")],
    _tag(("file_content", "file_id")),
]


class TemplateMessage(_Open):
    role: str = Field(description="`system`, `developer` (sent as system), `user`, `assistant`.")
    content: str | dict[str, Any] | list[dict[str, Any]] = Field(
        description="Text with `{{item.…}}` references, or input_text/output_text parts."
    )
    type: Literal["message"] | None = None


class TemplateInput(_Open):
    type: Literal["template"]
    template: Annotated[list[TemplateMessage], Field(min_length=1)]


class ItemReferenceInput(_Open):
    type: Literal["item_reference"]
    item_reference: str = Field(description="A list of messages in the row, e.g. `item.messages`.")


InputMessages = Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]


class SamplingParams(_Open):
    """Sent with each chat completion; others (`response_format`, `tools`, ...) are refused."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None


class JsonlDataSource(_Open):
    """Rows that bring their own `sample`: graded as they are, no model asked."""

    type: Literal["jsonl"]
    source: Source


class CompletionsDataSource(_Open):
    """Rows a deployed model answers (a chat completion each), then graded."""

    type: Literal["completions"]
    source: Source
    input_messages: InputMessages
    model: str = Field(min_length=1, description="A deployed model.")
    sampling_params: SamplingParams | None = None


class OtherDataSource(_Open):
    """`responses`: refused (the gateway stores no responses)."""

    type: str


DataSource = Annotated[
    Annotated[JsonlDataSource, Tag("jsonl")]
    | Annotated[CompletionsDataSource, Tag("completions")]
    | Annotated[OtherDataSource, Tag("other")],
    _tag(("jsonl", "completions")),
]


class RunCreate(BaseModel):
    """`POST /v1/evals/{eval_id}/runs`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    data_source: DataSource


# --- answers ----------------------------------------------------------------------------------


class CustomDataSourceSchema(BaseModel):
    type: Literal["custom"] = "custom"
    schema_: dict[str, Any] = Field(
        alias="schema", description="The JSON schema of a run's rows: `item`, and `sample`."
    )

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class Eval(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    created_at: int
    metadata: dict[str, str] | None = None
    data_source_config: CustomDataSourceSchema
    testing_criteria: list[dict[str, Any]]


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool
    eval_id: str


class ApiError(BaseModel):
    code: str
    message: str


class ResultCounts(BaseModel):
    total: int
    passed: int
    failed: int
    errored: int


class CriterionResult(BaseModel):
    testing_criteria: str = Field(description="The testing criterion's name.")
    passed: int
    failed: int


class ModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class Run(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    created_at: int
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    model: str | None = Field(description="The deployed model sampled; null for `jsonl` runs.")
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    result_counts: ResultCounts
    per_testing_criteria_results: list[CriterionResult]
    per_model_usage: list[ModelUsage]
    report_url: str = Field(
        "", description="Always empty: this gateway has no report dashboard; see output_items."
    )
    error: ApiError | None = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Run]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool
    run_id: str


class Message(BaseModel):
    role: str
    content: str | None = None


class SampleUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class Sample(BaseModel):
    input: list[Message]
    output: list[Message]
    finish_reason: str | None = None
    model: str | None = None
    usage: SampleUsage
    error: ApiError | None = None
    temperature: float | None = None
    max_completion_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None


class GraderResult(BaseModel):
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None
    error: str | None = Field(None, description="Forgeline: why the grader could not score.")


class OutputItem(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    eval_id: str
    run_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int = Field(description="The row's position in the data source, from 0.")
    datasource_item: dict[str, Any]
    results: list[GraderResult]
    sample: Sample


class OutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItem]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
