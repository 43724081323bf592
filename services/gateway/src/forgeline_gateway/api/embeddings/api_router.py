"""HTTP surface of `/v1/embeddings`."""

from __future__ import annotations

from fastapi import APIRouter

from forgeline_gateway.api.common import add_inference_route
from forgeline_gateway.api.embeddings.protocol import EmbeddingList, EmbeddingRequest

__all__ = ["router"]

router = APIRouter(tags=["inference"])

add_inference_route(
    router,
    "/v1/embeddings",
    name="create_embeddings",
    summary="Create embeddings",
    body=EmbeddingRequest,
    result=EmbeddingList,
    serving="embeddings",
)
