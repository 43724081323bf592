"""`/v1/completions` request and response bodies, after OpenAI's API reference
(https://platform.openai.com/docs/api-reference/completions/create)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_gateway.api.common import (
    FinishReason,
    ModelName,
    OpenAIRequest,
    OpenAIResponse,
    Stop,
    StreamOptions,
    Usage,
)

__all__ = ["Completion", "CompletionChunk", "CompletionRequest"]

#: A prompt: text, a batch of texts, token ids, or a batch of token id lists.
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1)]
)


class CompletionRequest(OpenAIRequest):
    """A (legacy) text completion request."""

    model: ModelName
    prompt: Prompt
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: Stop | None = None
    seed: int | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: str | None = None
    user: str | None = None


class CompletionLogprobs(BaseModel):
    model_config = ConfigDict(extra="allow")

    text_offset: list[int] | None = None
    token_logprobs: list[float | None] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | dict[str, Any] | None = None


class Completion(OpenAIResponse):
    """A text completion; streamed, each event has this shape too."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


CompletionChunk = Completion
