"""Schema pieces the OpenAI endpoints share (usage, stream options, stop, model names), and the
route every inference endpoint is (`add_inference_route`).

Request models accept parameters beyond OpenAI's (``extra="allow"``): a backend may honour them
(llama.cpp's ``top_k``), and the backend adapter decides; one it cannot honour is a 400, never
silently dropped. Response models keep OpenAI's fields and drop backend-only ones (``timings``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Protocol, TypeVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.errors import INFERENCE_ERRORS
from forgeline_gateway.security.auth import BEARER_SECURITY, admit
from forgeline_gateway.security.keys import Scope

__all__ = [
    "ModelName",
    "OpenAIRequest",
    "OpenAIResponse",
    "Stop",
    "StreamOptions",
    "Usage",
    "add_inference_route",
    "body_schemas",
    "json_body",
    "parse_body",
]

#: A model name as clients send it: a deployment name (``tiny``, ``ft:tiny:acme:demo:abc123``).
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]

#: Up to four stop sequences, or one.
Stop = str | Annotated[list[str], Field(max_length=4)]


class OpenAIRequest(BaseModel):
    """Base of request bodies: OpenAI's fields typed, any other parameter kept for the backend."""

    model_config = ConfigDict(extra="allow")

    def upstream_params(self) -> dict[str, Any]:
        """The parameters the client set, as JSON values; a null top-level parameter means
        "the default" in OpenAI's API, so it is left out rather than forwarded."""
        body = self.model_dump(mode="json", exclude_unset=True, by_alias=True)
        return {key: value for key, value in body.items() if value is not None}


class OpenAIResponse(BaseModel):
    """Base of response bodies: OpenAI's fields, anything a backend adds is dropped."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = Field(
        None, description="Send a last chunk (with empty `choices`) carrying the usage."
    )
    include_obfuscation: bool | None = Field(
        None, description="Accepted for compatibility; the gateway never pads chunks."
    )


class PromptTokensDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(BaseModel):
    """Token counts of one request."""

    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`, parsed and validated in one pass by pydantic.

    The inference endpoints read their bodies this way rather than through a FastAPI body
    parameter: it is the hot path, and FastAPI's machinery costs more than the parsing itself.

    Raises:
        RequestValidationError: answered as a 400 naming the parameter, like FastAPI's own.
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        raise RequestValidationError(error.errors(include_url=False), body=body) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``openapi_extra`` documenting `model` as an operation's JSON body (the schema
    itself goes into the document's components, see `body_schemas`)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def body_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The component schemas of request bodies documented with `json_body`."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


class _Creates(Protocol):
    """The serving object of an inference endpoint (`ChatServing`, `EmbeddingServing`...)."""

    async def create(self, request: Request, body: Any, /) -> Response: ...


def add_inference_route(
    router: APIRouter,
    path: str,
    *,
    name: str,
    summary: str,
    body: type[OpenAIRequest],
    result: type[BaseModel],
    serving: str,
    stream_events: str | None = None,
) -> None:
    """Add ``POST path`` to `router` as an inference endpoint: the caller's key is checked for the
    inference scope before the body is read, the body parsed as `body` (`parse_body`), and the
    request answered by ``app.state.<serving>.create(request, body)``.

    Args:
        name: the route's name (FastAPI derives the OpenAPI ``operationId`` from it).
        result: what the endpoint answers, as documented.
        stream_events: for an endpoint that can stream, the documentation of its
            ``text/event-stream`` answer.
    """
    answer: dict[str, Any] = {"model": result}
    if stream_events is not None:
        answer["content"] = {
            "text/event-stream": {"schema": {"type": "string", "description": stream_events}}
        }

    # No docstring: FastAPI would publish it as the operation's description.
    async def endpoint(request: Request) -> Response:
        await admit(request, Scope.INFERENCE)  # before the body: no key, no parsing
        parsed = await parse_body(request, body)
        creates: _Creates = getattr(request.app.state, serving)
        return await creates.create(request, parsed)

    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=name,
        response_model=None,
        responses={200: answer, **INFERENCE_ERRORS},
        openapi_extra={**json_body(body), "security": BEARER_SECURITY},
        summary=summary,
    )
