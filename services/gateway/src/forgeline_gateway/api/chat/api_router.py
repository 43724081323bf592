"""HTTP surface of `/v1/chat/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from forgeline_gateway.api.chat.protocol import ChatCompletion, ChatCompletionRequest
from forgeline_gateway.api.chat.serving import ChatServing
from forgeline_gateway.api.common import json_body, parse_body
from forgeline_gateway.errors import INFERENCE_ERRORS
from forgeline_gateway.security.auth import BEARER_SECURITY, admit
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["inference"])

_STREAM_DOC: dict[str, Any] = {
    "schema": {
        "type": "string",
        "description": "With `stream: true`: server-sent events, each `data: "
        "<chat.completion.chunk JSON>`, ending with `data: [DONE]`.",
    }
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "content": {"text/event-stream": _STREAM_DOC}},
    **INFERENCE_ERRORS,
}


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=_RESPONSES,
    openapi_extra={**json_body(ChatCompletionRequest), "security": BEARER_SECURITY},
    summary="Create a chat completion",
)
async def create_chat_completion(request: Request) -> Response:
    await admit(request, Scope.INFERENCE)  # before the body: no key, no parsing
    body = await parse_body(request, ChatCompletionRequest)
    serving: ChatServing = request.app.state.chat
    return await serving.create(request, body)
