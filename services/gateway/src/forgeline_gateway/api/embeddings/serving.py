"""Serving `/v1/embeddings`: the shared proxy with the embeddings schema."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from forgeline_gateway.api.embeddings.protocol import EmbeddingList, EmbeddingRequest
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.routing.proxy import Proxy

__all__ = ["EmbeddingServing"]


class EmbeddingServing:
    """Answers embedding requests from the deployed embedding models."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def create(self, request: Request, body: EmbeddingRequest) -> Response:
        return await self.proxy.serve(request, Endpoint.EMBEDDINGS, body, EmbeddingList)
