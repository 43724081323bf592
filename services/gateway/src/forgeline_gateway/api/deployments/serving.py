"""Serving the admin deployments endpoints over the deployment manager."""

from __future__ import annotations

from forgeline_gateway.api.deployments.protocol import Deployment, DeploymentList
from forgeline_gateway.deployments.manager import DeploymentManager, DeploymentState

__all__ = ["DeploymentServing"]


class DeploymentServing:
    """Creates, lists, shows and deletes deployments."""

    def __init__(self, manager: DeploymentManager) -> None:
        self.manager = manager

    async def create(self, spec: object) -> Deployment:
        return _view(await self.manager.create(spec))

    def list(self) -> DeploymentList:
        return DeploymentList(data=[_view(s) for s in self.manager.list()])

    def get(self, name: str) -> Deployment:
        return _view(self.manager.get(name))

    async def delete(self, name: str) -> None:
        await self.manager.delete(name)


def _view(state: DeploymentState) -> Deployment:
    return Deployment(
        name=state.spec.name,
        backend=state.spec.backend,
        status="ready" if state.ready else "failed",
        error=state.error,
        instances=state.instances,
        adapters=list(state.adapters),
        loaded_adapters=list(state.loaded_adapters),
        created=state.created,
        spec=state.spec,
    )
