"""HTTP surface of `/v1/registry/...` (Forgeline's own; admin scope): the registry's models,
their versions and a version's lineage, for the console's Registry page and for scripts."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from forgeline_gateway.api.registry.protocol import (
    LineageGraph,
    RegistryModelList,
    RegistryVersion,
    RegistryVersionList,
)
from forgeline_gateway.api.registry.serving import RegistryServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["registry"], dependencies=[Depends(requires(Scope.ADMIN))])


def _serving(request: Request) -> RegistryServing:
    serving: RegistryServing = request.app.state.registry
    return serving


@router.get("/v1/registry/models", responses=ADMIN_ERRORS, summary="List the registry's models")
async def list_models(
    request: Request,
    prefix: str | None = Query(None, max_length=128, description="Only names starting so."),
) -> RegistryModelList:
    return await _serving(request).models(prefix)


@router.get(
    "/v1/registry/versions",
    responses=ADMIN_ERRORS,
    summary="List a registry model's versions, newest first",
)
async def list_versions(
    request: Request, model: str = Query(..., min_length=1, max_length=128)
) -> RegistryVersionList:
    return await _serving(request).versions(model)


@router.get(
    "/v1/registry/versions/{reference:path}",
    responses=ADMIN_ERRORS,
    summary="Retrieve one version (MODEL:N, MODEL@ALIAS or MODEL) with its files and digests",
)
async def retrieve_version(reference: str, request: Request) -> RegistryVersion:
    return await _serving(request).version(reference)


@router.get(
    "/v1/registry/lineage",
    responses=ADMIN_ERRORS,
    summary="A version's lineage: its ancestors and descendants, and how each was made",
)
async def lineage(
    request: Request,
    reference: str = Query(..., min_length=3, max_length=160, description="MODEL:NUMBER"),
    depth: int = Query(8, ge=1, le=64),
) -> LineageGraph:
    return await _serving(request).lineage(reference, depth)
