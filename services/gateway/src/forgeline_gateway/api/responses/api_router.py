"""HTTP surface of `/v1/responses`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from forgeline_gateway.api.common import json_body, parse_body
from forgeline_gateway.api.responses.protocol import ResponseObject, ResponsesRequest
from forgeline_gateway.api.responses.serving import ResponsesServing
from forgeline_gateway.errors import INFERENCE_ERRORS
from forgeline_gateway.security.auth import BEARER_SECURITY, admit
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["inference"])

_STREAM_DOC: dict[str, Any] = {
    "schema": {
        "type": "string",
        "description": "With `stream: true`: server-sent events, each `event: <type>` and "
        "`data: <event JSON>` with its `type` and `sequence_number`: `response.created`, "
        "`response.in_progress`, then per output item `response.output_item.added`, "
        "`response.content_part.added`, `response.output_text.delta`… (or "
        "`response.function_call_arguments.delta`…) and their `…done` events, ending with "
        "`response.completed` or `response.incomplete` (or `error` and `response.failed`).",
    }
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ResponseObject, "content": {"text/event-stream": _STREAM_DOC}},
    **INFERENCE_ERRORS,
}


@router.post(
    "/v1/responses",
    response_model=None,
    responses=_RESPONSES,
    openapi_extra={**json_body(ResponsesRequest), "security": BEARER_SECURITY},
    summary="Create a model response",
)
async def create_response(request: Request) -> Response:
    await admit(request, Scope.INFERENCE)  # before the body: no key, no parsing
    body = await parse_body(request, ResponsesRequest)
    serving: ResponsesServing = request.app.state.responses
    return await serving.create(request, body)
