"""Deployments: placing specs on backends, keeping them in the store, and in the routing table.

A deployment is stored only once it is placed, and the routing table learns of it last; removing
goes the other way round (routing first, so no new request reaches it). At start, `restore` places
every stored deployment again, so deployments survive a gateway restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from forgeline_gateway.backends.base import Backend
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_gateway.deployments.boundaries import DeploymentBoundaries
from forgeline_gateway.deployments.spec import DeploymentSpec, LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.routing.router import Instance, Route, Router
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import AlreadyExists, ForgelineError, InvalidArgument, NotFound

__all__ = ["DeploymentManager", "DeploymentState"]

log = logging.getLogger(__name__)

_SPEC: TypeAdapter[DeploymentSpec] = TypeAdapter(DeploymentSpec)


@dataclass(frozen=True)
class DeploymentState:
    """A deployment as the admin API shows it."""

    spec: Any
    created: int
    ready: bool
    instances: int
    error: str | None = None


class DeploymentManager:
    """Creates, lists and removes deployments; the only writer of the routing table."""

    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend[Any]],
        router: Router,
        *,
        max_in_flight: int,
        vllm_urls: list[str],
        ollama_url: str | None,
        artifacts: RegistryArtifacts | None = None,
        boundaries: DeploymentBoundaries | None = None,
    ) -> None:
        self.store = store
        self.backends = backends
        self.router = router
        self.max_in_flight = max_in_flight
        self.vllm_urls = vllm_urls
        self.ollama_url = ollama_url
        self.artifacts = artifacts
        self.boundaries = boundaries
        self._busy: set[str] = set()
        self._failed: dict[str, DeploymentState] = {}

    async def restore(self) -> None:
        """Place every stored deployment again; one that fails is listed as failed."""
        records = await self.store.run(self.store.list_deployments)

        async def restore_one(record: DeploymentRecord) -> None:
            spec = _SPEC.validate_json(record.spec_json)
            try:
                await self._place(spec, record.created_at)
            except Exception as error:
                message = error.message if isinstance(error, ForgelineError) else repr(error)
                log.error(
                    "deployment could not be restored",
                    extra={"model": record.name, "error": message},
                )
                self._failed[record.name] = DeploymentState(
                    spec=spec, created=record.created_at, ready=False, instances=0, error=message
                )
                self.router.mark_unavailable(record.name, message)

        await asyncio.gather(*(restore_one(r) for r in records))

    async def create(self, spec: Any) -> DeploymentState:
        """Place `spec` and remember it.

        Raises:
            AlreadyExists: a deployment of that name exists or is being created.
            ForgelineError: the backend could not place it (the message says why).
        """
        name = spec.name
        if name in self._busy or self._exists(name):
            raise AlreadyExists(
                f"a deployment named '{name}' already exists; delete it first", field="name"
            )
        spec = self._with_defaults(spec)
        self._busy.add(name)
        try:
            created = int(time.time())
            route = await self._place(spec, created, publish=False)
            try:
                record = DeploymentRecord(name, spec.model_dump_json(), created)
                await self.store.run(lambda: self.store.put_deployment(record))
            except BaseException:
                await route.backend.release(name, spec, route.placement)
                raise
            self.router.add(route)
            log.info("deployment created", extra={"model": name, "backend": spec.backend})
            return self._state(route)
        finally:
            self._busy.discard(name)

    async def delete(self, name: str) -> None:
        """Stop serving `name` and forget it.

        Raises:
            NotFound: no deployment has that name.
        """
        if name in self._busy:
            raise AlreadyExists(f"the deployment '{name}' is being changed; retry shortly")
        failed = self._failed.pop(name, None)
        route = self.router.remove(name)
        if route is None and failed is None:
            raise NotFound(f"there is no deployment named '{name}'", field="name")
        self._busy.add(name)
        try:
            await self.store.run(lambda: self.store.delete_deployment(name))
            self.router.clear_unavailable(name)
            if route is not None:
                await route.backend.release(name, route.spec, route.placement)
            log.info("deployment deleted", extra={"model": name})
        finally:
            self._busy.discard(name)

    def list(self) -> list[DeploymentState]:
        states = [self._state(route) for route in self.router.routes()]
        states += list(self._failed.values())
        return sorted(states, key=lambda s: (s.created, s.spec.name))

    def get(self, name: str) -> DeploymentState:
        for state in self.list():
            if state.spec.name == name:
                return state
        raise NotFound(f"there is no deployment named '{name}'", field="name")

    async def close(self) -> None:
        """Release what the backends hold in this process (llama-server processes); stored
        deployments stay, to be restored at the next start."""
        await asyncio.gather(*(backend.close() for backend in self.backends.values()))

    def _exists(self, name: str) -> bool:
        try:
            self.router.get(name)
        except ForgelineError:
            return name in self._failed
        return True

    def _with_defaults(self, spec: Any) -> Any:
        if isinstance(spec, VllmSpec) and not spec.urls and spec.registry_model is None:
            if not self.vllm_urls:
                raise InvalidArgument(
                    "no vLLM server is configured: give 'urls' or set "
                    "FORGELINE_GATEWAY_VLLM_URLS on the gateway",
                    field="urls",
                )
            return spec.model_copy(update={"urls": list(self.vllm_urls)})
        if isinstance(spec, OllamaSpec) and spec.url is None:
            if not self.ollama_url:
                raise InvalidArgument(
                    "no Ollama server is configured: give 'url' or set "
                    "FORGELINE_GATEWAY_OLLAMA_URL on the gateway",
                    field="url",
                )
            return spec.model_copy(update={"url": self.ollama_url})
        return spec

    async def _place(self, spec: Any, created: int, *, publish: bool = True) -> Route:
        backend = self.backends.get(spec.backend)
        if backend is None:
            raise InvalidArgument(
                f"the backend '{spec.backend}' is not enabled on this gateway", field="backend"
            )
        # Here rather than at create: a stored deployment outside boundaries the operator has
        # since narrowed is not placed again either.
        if self.boundaries is not None:
            self.boundaries.check(spec)
        placed = spec
        field = _registry_field(spec)
        if field is not None:
            if self.artifacts is None:
                raise InvalidArgument(
                    "registry versions cannot be deployed: the gateway has no registry "
                    "(set FORGELINE_GATEWAY_REGISTRY_TARGET)",
                    field=field,
                )
            placed = await self.artifacts.localize(spec)
        placement = await backend.place(spec.name, placed)
        limit = spec.max_in_flight or self.max_in_flight
        route = Route(
            name=spec.name,
            backend=backend,
            spec=spec,
            capabilities=backend.capabilities(spec),
            upstream_model=placement.upstream_model,
            instances=[Instance(url=url.rstrip("/"), limit=limit) for url in placement.urls],
            metadata=spec.metadata,
            created=created,
            placement=placement,
        )
        if publish:
            self._failed.pop(spec.name, None)
            self.router.clear_unavailable(spec.name)
            self.router.add(route)
        return route

    @staticmethod
    def _state(route: Route) -> DeploymentState:
        return DeploymentState(
            spec=route.spec, created=route.created, ready=True, instances=len(route.instances)
        )


def _registry_field(spec: Any) -> str | None:
    """The field of `spec` naming a registry version to fetch before placing, if any."""
    if isinstance(spec, LlamaCppSpec) and (spec.registry_gguf or spec.registry_lora):
        return "registry_gguf" if spec.registry_gguf else "registry_lora"
    if isinstance(spec, OllamaSpec) and spec.registry_gguf:
        return "registry_gguf"
    if isinstance(spec, VllmSpec) and spec.registry_model:
        return "registry_model"
    return None
