"""HTTP surface of `/v1/embeddings`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from forgeline_gateway.api.common import json_body, parse_body
from forgeline_gateway.api.embeddings.protocol import EmbeddingList, EmbeddingRequest
from forgeline_gateway.api.embeddings.serving import EmbeddingServing
from forgeline_gateway.errors import INFERENCE_ERRORS
from forgeline_gateway.security.auth import BEARER_SECURITY, admit
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["inference"])


@router.post(
    "/v1/embeddings",
    response_model=None,
    responses={200: {"model": EmbeddingList}, **INFERENCE_ERRORS},
    openapi_extra={**json_body(EmbeddingRequest), "security": BEARER_SECURITY},
    summary="Create embeddings",
)
async def create_embeddings(request: Request) -> Response:
    await admit(request, Scope.INFERENCE)  # before the body: no key, no parsing
    body = await parse_body(request, EmbeddingRequest)
    serving: EmbeddingServing = request.app.state.embeddings
    return await serving.create(request, body)
