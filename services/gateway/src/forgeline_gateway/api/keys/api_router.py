"""HTTP surface of the admin `/v1/keys` endpoints (scope: admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status

from forgeline_gateway.api.keys.protocol import ApiKey, ApiKeyCreate, ApiKeyList, CreatedApiKey
from forgeline_gateway.api.keys.serving import KeyServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["admin"], dependencies=[Depends(requires(Scope.ADMIN))])


def _serving(request: Request) -> KeyServing:
    serving: KeyServing = request.app.state.keys
    return serving


@router.post(
    "/v1/keys",
    status_code=status.HTTP_201_CREATED,
    responses=ADMIN_ERRORS,
    summary="Create an API key",
)
async def create_api_key(body: ApiKeyCreate, request: Request) -> CreatedApiKey:
    return await _serving(request).create(body)


@router.get("/v1/keys", responses=ADMIN_ERRORS, summary="List API keys")
async def list_api_keys(request: Request) -> ApiKeyList:
    return await _serving(request).list()


@router.delete("/v1/keys/{key_id}", responses=ADMIN_ERRORS, summary="Revoke an API key")
async def revoke_api_key(key_id: str, request: Request) -> ApiKey:
    return await _serving(request).revoke(key_id)
