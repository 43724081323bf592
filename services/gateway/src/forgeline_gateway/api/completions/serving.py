"""Serving `/v1/completions`: the shared proxy with the completions schema."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.api.completions.protocol import Completion, CompletionRequest
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.routing.proxy import Proxy

__all__ = ["CompletionServing"]


class CompletionServing:
    """Answers text completion requests from the deployed models."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def create(self, request: Request, body: CompletionRequest) -> Response:
        return await self.proxy.serve(request, Endpoint.COMPLETIONS, body, Completion)
