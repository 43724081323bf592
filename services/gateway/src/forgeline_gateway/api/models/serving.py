"""Serving `/v1/models`: what is deployed, with its registry metadata."""

from __future__ import annotations

from forgeline_gateway.api.models.protocol import Model, ModelList
from forgeline_gateway.routing.router import Route, Router

__all__ = ["ModelServing"]

OWNER = "forgeline"


class ModelServing:
    """Lists the models the routing table serves."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def list(self) -> ModelList:
        routes = sorted(self.router.routes(), key=lambda r: (r.created, r.name))
        return ModelList(data=[self._model(r) for r in routes])

    def retrieve(self, name: str) -> Model:
        """Raises ModelNotFound (404) for a name nothing is deployed under."""
        return self._model(self.router.get(name))

    @staticmethod
    def _model(route: Route) -> Model:
        return Model(
            id=route.name,
            created=route.created,
            owned_by=OWNER,
            backend=route.backend_kind,
            endpoints=sorted(e.value for e in route.capabilities.params),
            metadata=route.metadata,
            base_deployment=getattr(route.spec, "base", None),
        )
