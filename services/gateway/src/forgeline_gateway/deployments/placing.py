"""Placing one deployment on its backend, and the routes deployments are served on: `Placer`.

Before a spec is placed it is localized: checked against the operator's boundaries, with the
registry versions it names pulled into the model cache. Its route then bounds the requests in
flight on each instance (`Placer.route`); an adapter deployment's route reuses its base's
instances (`adapter_route`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forgeline_gateway.backends.base import Backend, Placement
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_gateway.deployments.bookkeeping import DeploymentBook
from forgeline_gateway.deployments.boundaries import DeploymentBoundaries
from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.routing.gate import RequestGate
from forgeline_gateway.routing.router import Instance, Route
from forgeline_kit.errors import InvalidArgument

__all__ = ["Placer", "adapter_route"]


class Placer:
    """Localizes specs, places them on the gateway's backends and makes their routes."""

    def __init__(
        self,
        book: DeploymentBook,
        backends: Mapping[str, Backend[Any]],
        *,
        max_in_flight: int,
        queue_per_instance: int,
        artifacts: RegistryArtifacts | None,
        boundaries: DeploymentBoundaries | None,
    ) -> None:
        """
        Args:
            book: where a published deployment is recorded.
            max_in_flight: requests in flight per instance whose slots are unknown.
            queue_per_instance: requests admitted to an instance past its slots, where its
                backend reports them (`Placement.slots`).
        """
        self.book = book
        self.backends = backends
        self.max_in_flight = max_in_flight
        self.queue_per_instance = queue_per_instance
        self.artifacts = artifacts
        self.boundaries = boundaries

    def backend(self, spec: Any) -> Backend[Any]:
        backend = self.backends.get(spec.backend)
        if backend is None:
            raise InvalidArgument(
                f"the backend '{spec.backend}' is not enabled on this gateway", field="backend"
            )
        return backend

    async def localize(self, spec: Any) -> Any:
        """`spec` checked against the operator's boundaries, with its registry versions pulled
        into the model cache and named by their local files."""
        # Here rather than at create: a stored deployment outside boundaries the operator has
        # since narrowed is not placed again either.
        if self.boundaries is not None:
            self.boundaries.check(spec)
        field = _registry_field(spec)
        if field is None:
            return spec
        if self.artifacts is None:
            raise InvalidArgument(
                "registry versions cannot be deployed: the gateway has no registry "
                "(set FORGELINE_GATEWAY_REGISTRY_TARGET)",
                field=field,
            )
        return await self.artifacts.localize(spec)

    async def place(self, spec: Any, created: int, *, publish: bool = True) -> tuple[Route, Any]:
        """Place `spec` on its backend; its route and its localized spec. With `publish`, the
        route is published and the deployment recorded as placed."""
        backend = self.backend(spec)
        placed = await self.localize(spec)
        route = await self.place_localized(spec, backend, placed, created, publish=publish)
        return route, placed

    async def place_localized(
        self, spec: Any, backend: Backend[Any], placed: Any, created: int, *, publish: bool
    ) -> Route:
        """Place `spec`, localized as `placed`, on `backend` (as `place` does)."""
        placement = await backend.place(spec.name, placed)
        route = self.route(spec, backend, placement, created)
        if publish:
            self.book.publish([route])
            self.book.placed[spec.name] = placed
        return route

    def route(
        self,
        spec: Any,
        backend: Backend[Any],
        placement: Placement,
        created: int,
    ) -> Route:
        return Route(
            name=spec.name,
            backend=backend,
            spec=spec,
            capabilities=backend.capabilities(spec),
            upstream_model=placement.upstream_model,
            instances=[
                Instance(url=url.rstrip("/"), limit=self._admitted(spec, placement, url))
                for url in placement.urls
            ],
            metadata=spec.metadata,
            created=created,
            placement=placement,
        )

    def _admitted(self, spec: Any, placement: Placement, url: str) -> int:
        """Requests the instance at `url` may have in flight: the deployment's `max_in_flight`
        if set; else its slots and a short queue, where the backend knows its slots (a request
        past them would wait inside the server, where no client sees why); else the gateway's
        fixed bound."""
        if spec.max_in_flight:
            return int(spec.max_in_flight)
        slots = placement.slots.get(url)
        if slots:
            return slots + self.queue_per_instance
        return self.max_in_flight


def adapter_route(
    spec: Any,
    base: Route,
    placement: Placement,
    created: int,
    *,
    gate: RequestGate | None = None,
) -> Route:
    """The route of the adapter deployment `spec` on its base's route `base`: the base's
    own instances, so the base's bound on requests in flight covers its adapters' too, and
    the base's name as `metadata.base` unless the spec gives one."""
    metadata = spec.metadata
    if metadata.base is None:
        metadata = metadata.model_copy(update={"base": base.name})
    return Route(
        name=spec.name,
        backend=base.backend,
        spec=spec,
        capabilities=base.capabilities,
        upstream_model=placement.upstream_model,
        instances=list(base.instances),
        metadata=metadata,
        created=created,
        placement=placement,
        gate=gate,
    )


def _registry_field(spec: Any) -> str | None:
    """The field of `spec` naming a registry version to fetch before placing, if any."""
    if isinstance(spec, LlamaCppSpec | OllamaSpec) and (spec.registry_gguf or spec.registry_lora):
        return "registry_gguf" if spec.registry_gguf else "registry_lora"
    if isinstance(spec, VllmSpec) and spec.registry_model:
        return "registry_model"
    if isinstance(spec, VllmSpec) and spec.registry_adapter:
        return "registry_adapter"
    return None
