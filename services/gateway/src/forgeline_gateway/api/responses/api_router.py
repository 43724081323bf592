"""HTTP surface of `/v1/responses`."""

from __future__ import annotations

from fastapi import APIRouter

from forgeline_gateway.api.common import add_inference_route
from forgeline_gateway.api.responses.protocol import ResponseObject, ResponsesRequest

__all__ = ["router"]

router = APIRouter(tags=["inference"])

add_inference_route(
    router,
    "/v1/responses",
    name="create_response",
    summary="Create a model response",
    body=ResponsesRequest,
    result=ResponseObject,
    serving="responses",
    stream_events="With `stream: true`: server-sent events, each `event: <type>` and "
    "`data: <event JSON>` with its `type` and `sequence_number`: `response.created`, "
    "`response.in_progress`, then per output item `response.output_item.added`, "
    "`response.content_part.added`, `response.output_text.delta`… (or "
    "`response.function_call_arguments.delta`…) and their `…done` events, ending with "
    "`response.completed` or `response.incomplete` (or `error` and `response.failed`).",
)
