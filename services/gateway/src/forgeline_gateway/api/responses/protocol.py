"""`/v1/responses` request and response bodies, after OpenAI's API reference
(https://platform.openai.com/docs/api-reference/responses/create) and the official SDK's types
(``openai.types.responses``).

The gateway answers the Responses API statelessly, over a deployment's chat completions: the
request carries the whole conversation in ``input``. Parameters that need stored state
(``previous_response_id``, ``conversation``, ``store: true``, ``background: true``) or that no
backend honours are typed here so the OpenAPI document shows them, and refused by the serving
layer with a 400 naming them (see ``translate.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from forgeline_gateway.api.common import ModelName, OpenAIRequest, OpenAIResponse

__all__ = [
    "FunctionTool",
    "InputItem",
    "OutputFunctionCall",
    "OutputMessage",
    "OutputText",
    "ResponseObject",
    "ResponseUsage",
    "ResponsesRequest",
]


# --- request -------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")  # annotations, logprobs of replayed output


class InputText(_Part):
    type: Literal["input_text"]
    text: str


class InputOutputText(_Part):
    """An assistant's earlier answer, replayed from a response's ``output``."""

    type: Literal["output_text"]
    text: str


class InputRefusal(_Part):
    type: Literal["refusal"]
    refusal: str


MessagePart = Annotated[InputText | InputOutputText | InputRefusal, Field(discriminator="type")]


class InputMessage(BaseModel):
    """A message of the conversation (``type`` may be left out, as in OpenAI's "easy" form)."""

    model_config = ConfigDict(extra="allow")  # id, status, phase of replayed output

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: list[MessagePart] | str


class FunctionCallInput(BaseModel):
    """A function call the model made earlier, replayed from a response's ``output``."""

    model_config = ConfigDict(extra="allow")  # id, status

    type: Literal["function_call"]
    call_id: Annotated[str, StringConstraints(min_length=1)]
    name: Annotated[str, StringConstraints(min_length=1)]
    arguments: str


class FunctionCallOutputInput(BaseModel):
    """The result of a function call, for the model to read."""

    model_config = ConfigDict(extra="allow")  # id, status

    type: Literal["function_call_output"]
    call_id: Annotated[str, StringConstraints(min_length=1)]
    output: list[InputText] | str


def _item_type(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallInput, Tag("function_call")]
    | Annotated[FunctionCallOutputInput, Tag("function_call_output")],
    Discriminator(
        _item_type,
        custom_error_type="invalid_input_item",
        custom_error_message="an input item is a message, a function_call or a "
        "function_call_output",
    ),
]


class FunctionTool(BaseModel):
    """A function the model may call (the only kind of tool the gateway offers)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: Annotated[str, StringConstraints(min_length=1)]


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class TextFormatText(BaseModel):
    type: Literal["text"]


class TextFormatJsonObject(BaseModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="Only `medium` (the default) is accepted."
    )


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: str | None = None
    summary: str | None = None


class ResponsesStreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_obfuscation: bool | None = Field(
        None, description="Accepted for compatibility; the gateway never pads events."
    )


_STATELESS = "Not supported: the gateway keeps no responses; send the conversation in `input`."


class ResponsesRequest(OpenAIRequest):
    """A Responses API request, answered from the model's chat completions."""

    model: ModelName
    input: Annotated[list[InputItem], Field(min_length=1)] | str = Field(
        description="A user message, or the conversation as messages, `function_call` and "
        "`function_call_output` items."
    )
    instructions: str | None = Field(None, description="Sent first, as a system message.")
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    metadata: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=64)],
                Annotated[str, StringConstraints(max_length=512)],
            ],
            Field(max_length=16),
        ]
        | None
    ) = Field(None, description="Echoed in the response; not stored.")
    user: str | None = Field(None, description="Echoed in the response.")
    safety_identifier: str | None = Field(None, description="Echoed in the response.")
    prompt_cache_key: str | None = Field(None, description="Echoed in the response.")
    service_tier: str | None = Field(
        None, description="Accepted; every request is served at the `default` tier."
    )
    store: bool | None = Field(
        None, description="Only `false` (or unset): the gateway keeps no responses."
    )
    previous_response_id: str | None = Field(None, description=_STATELESS)
    conversation: str | dict[str, Any] | None = Field(None, description=_STATELESS)
    background: bool | None = Field(None, description="Only `false` (or unset).")
    include: list[str] | None = Field(None, description="Only an empty list (or unset).")
    reasoning: Reasoning | None = Field(None, description="Only with no value set.")
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="Only `disabled` (the default)."
    )
    max_tool_calls: int | None = Field(None, description="Not supported.")
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        None, description="Only 0 (or unset)."
    )
    prompt: dict[str, Any] | None = Field(None, description="Not supported (prompt templates).")


# --- response ------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


OutputItem = Annotated[OutputMessage | OutputFunctionCall, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(OpenAIResponse):
    """A response: the model's output items and the request's parameters, echoed."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: Reasoning = Field(default_factory=Reasoning)
    service_tier: str = "default"
    store: bool = False
    background: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    max_tool_calls: int | None = None
    top_logprobs: int = 0
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
