"""`/v1/embeddings` request and response bodies, after OpenAI's API reference
(https://platform.openai.com/docs/api-reference/embeddings/create)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_gateway.api.common import ModelName, OpenAIRequest, OpenAIResponse

__all__ = ["Embedding", "EmbeddingList", "EmbeddingRequest", "EmbeddingUsage"]

#: Input: a text, a batch of texts (at most 2048), token ids, or a batch of token id lists.
EmbeddingInput = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class EmbeddingRequest(OpenAIRequest):
    """An embeddings request."""

    model: ModelName
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class Embedding(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(OpenAIResponse):
    """The embeddings of every input, in input order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)
