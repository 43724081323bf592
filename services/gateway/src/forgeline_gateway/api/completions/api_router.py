"""HTTP surface of `/v1/completions`."""

from __future__ import annotations

from fastapi import APIRouter

from forgeline_gateway.api.common import add_inference_route
from forgeline_gateway.api.completions.protocol import Completion, CompletionRequest

__all__ = ["router"]

router = APIRouter(tags=["inference"])

add_inference_route(
    router,
    "/v1/completions",
    name="create_completion",
    summary="Create a text completion",
    body=CompletionRequest,
    result=Completion,
    serving="completions",
    stream_events="With `stream: true`: server-sent events, each `data: "
    "<text_completion JSON>`, ending with `data: [DONE]`.",
)
