"""HTTP surface of `/v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from forgeline_gateway.api.models.protocol import Model, ModelList
from forgeline_gateway.api.models.serving import ModelServing
from forgeline_gateway.errors import INFERENCE_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["inference"], dependencies=[Depends(requires(Scope.INFERENCE))])


@router.get("/v1/models", responses=INFERENCE_ERRORS, summary="List models")
async def list_models(request: Request) -> ModelList:
    serving: ModelServing = request.app.state.models
    return serving.list()


@router.get("/v1/models/{model:path}", responses=INFERENCE_ERRORS, summary="Retrieve a model")
async def retrieve_model(model: str, request: Request) -> Model:
    serving: ModelServing = request.app.state.models
    return serving.retrieve(model)
