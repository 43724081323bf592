"""Serving `/v1/responses`: the request translated to a chat completion (`translate.py`), sent
through the shared proxy to the model's deployment, and the answer translated back."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.api.chat.protocol import ChatCompletion
from forgeline_gateway.api.responses.protocol import ResponsesRequest
from forgeline_gateway.api.responses.translate import (
    ResponsesTranslation,
    chat_request,
    public_param,
)
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.routing.proxy import Proxy
from forgeline_kit.errors import InvalidArgument

__all__ = ["ResponsesServing"]


class ResponsesServing:
    """Answers Responses API requests from the deployed models' chat completions."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def create(self, request: Request, body: ResponsesRequest) -> Response:
        chat = chat_request(body)
        translation = ResponsesTranslation(body)
        try:
            return await self.proxy.serve(request, Endpoint.CHAT, chat, ChatCompletion, translation)
        except InvalidArgument as error:
            # The deployment's capabilities and the backend speak of the chat request.
            raise public_param(error) from None
