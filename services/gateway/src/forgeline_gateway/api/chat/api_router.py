"""HTTP surface of `/v1/chat/completions`."""

from __future__ import annotations

from fastapi import APIRouter

from forgeline_gateway.api.chat.protocol import ChatCompletion, ChatCompletionRequest
from forgeline_gateway.api.common import add_inference_route

__all__ = ["router"]

router = APIRouter(tags=["inference"])

add_inference_route(
    router,
    "/v1/chat/completions",
    name="create_chat_completion",
    summary="Create a chat completion",
    body=ChatCompletionRequest,
    result=ChatCompletion,
    serving="chat",
    stream_events="With `stream: true`: server-sent events, each `data: "
    "<chat.completion.chunk JSON>`, ending with `data: [DONE]`.",
)
