"""Serving `/v1/chat/completions`: the shared proxy with the chat schema."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.api.chat.protocol import ChatCompletion, ChatCompletionRequest
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.routing.proxy import Proxy

__all__ = ["ChatServing"]


class ChatServing:
    """Answers chat completion requests from the deployed models."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def create(self, request: Request, body: ChatCompletionRequest) -> Response:
        return await self.proxy.serve(request, Endpoint.CHAT, body, ChatCompletion)
