"""HTTP surface of the admin `/v1/deployments` endpoints (scope: admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status
from starlette.responses import Response

from forgeline_gateway.api.deployments.protocol import Deployment, DeploymentList, DeploymentSpec
from forgeline_gateway.api.deployments.serving import DeploymentServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["admin"], dependencies=[Depends(requires(Scope.ADMIN))])


def _serving(request: Request) -> DeploymentServing:
    serving: DeploymentServing = request.app.state.deployments
    return serving


@router.post(
    "/v1/deployments",
    status_code=status.HTTP_201_CREATED,
    responses=ADMIN_ERRORS,
    summary="Deploy a model on a backend",
)
async def create_deployment(spec: DeploymentSpec, request: Request) -> Deployment:
    return await _serving(request).create(spec)


@router.get("/v1/deployments", responses=ADMIN_ERRORS, summary="List deployments")
async def list_deployments(request: Request) -> DeploymentList:
    return _serving(request).list()


@router.get("/v1/deployments/{name:path}", responses=ADMIN_ERRORS, summary="Show a deployment")
async def get_deployment(name: str, request: Request) -> Deployment:
    return _serving(request).get(name)


@router.delete(
    "/v1/deployments/{name:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=ADMIN_ERRORS,
    summary="Undeploy a model",
)
async def delete_deployment(name: str, request: Request) -> Response:
    await _serving(request).delete(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
