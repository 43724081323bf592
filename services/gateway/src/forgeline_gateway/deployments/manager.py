"""Deployments: placing specs on backends, keeping them in the store, and in the routing table.

A deployment is stored only once it is placed, and the routing table learns of it last; removing
goes the other way round (routing first, so no new request reaches it). At start, `restore` places
every stored deployment again, so deployments survive a gateway restart (``restore.py``).

`DeploymentManager` is the one entry point; what it shares with its collaborators is in
``bookkeeping.py``, and placing one deployment and making its routes in ``placing.py``. Adapter
deployments (a spec with `base`) are served on their base deployment's instances: on llama.cpp
by the base's processes, restarted blue-green with each change of its adapters
(``shared_base.py``); on vLLM and Ollama attached to the running server
(``runtime_adapters.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from forgeline_gateway.backends.base import Backend
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_gateway.deployments.bookkeeping import DeploymentBook, DeploymentState
from forgeline_gateway.deployments.boundaries import DeploymentBoundaries
from forgeline_gateway.deployments.placing import Placer
from forgeline_gateway.deployments.restore import DeploymentRestorer
from forgeline_gateway.deployments.runtime_adapters import RuntimeAdapters, RuntimeAdapterSpec
from forgeline_gateway.deployments.shared_base import SharedBaseAdapters
from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.metrics import GatewayMetrics
from forgeline_gateway.routing.router import Route, Router
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

__all__ = ["DeploymentManager", "DeploymentState"]

log = logging.getLogger(__name__)


class DeploymentManager:
    """Creates, lists and removes deployments; the only writer of the routing table."""

    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend[Any]],
        router: Router,
        *,
        max_in_flight: int,
        queue_per_instance: int = 0,
        vllm_urls: list[str],
        ollama_url: str | None,
        artifacts: RegistryArtifacts | None = None,
        boundaries: DeploymentBoundaries | None = None,
        drain_seconds: float = 600.0,
        metrics: GatewayMetrics | None = None,
        retry_after: int = 1,
        adapter_wait_seconds: float = 5.0,
    ) -> None:
        """
        Args:
            max_in_flight: requests in flight per instance whose slots are unknown.
            queue_per_instance: requests admitted to an instance past its slots, where its
                backend reports them (`Placement.slots`).
            drain_seconds: how long the old processes of a restarted base serve the requests
                in flight on them before they are stopped anyway, and a deleted vLLM adapter
                stays loaded for its own (the gateway's request timeout: no request runs
                longer).
            metrics: where the time to attach each adapter is observed.
            retry_after: the Retry-After of a request for an unloaded adapter refused because
                every adapter loaded on its base stays busy.
            adapter_wait_seconds: how long such a request waits for one to become idle.
        """
        self.store = store
        self.backends = backends
        self.router = router
        self.vllm_urls = vllm_urls
        self.ollama_url = ollama_url
        self.metrics = metrics
        self._book = DeploymentBook(router)
        self._placer = Placer(
            self._book,
            backends,
            max_in_flight=max_in_flight,
            queue_per_instance=queue_per_instance,
            artifacts=artifacts,
            boundaries=boundaries,
        )
        self._shared = SharedBaseAdapters(
            self._book, self._placer, store, drain_seconds=drain_seconds
        )
        self._runtime = RuntimeAdapters(
            self._book,
            self._placer,
            store,
            drain_seconds=drain_seconds,
            retry_after=retry_after,
            adapter_wait_seconds=adapter_wait_seconds,
            metrics=metrics,
        )
        self._restorer = DeploymentRestorer(
            store, self._book, self._placer, self._shared, self._runtime
        )

    def adapters_per_base(self) -> dict[tuple[str, str], int]:
        """How many adapter deployments each base deployment serves, by (base, backend)."""
        counts: dict[tuple[str, str], int] = {}
        for attached in self._book.attached.values():
            key = (attached.base, attached.spec.backend)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def loaded_adapters_per_base(self) -> dict[tuple[str, str], int]:
        """How many adapters are loaded now in each base deployment's server (vLLM bases,
        which load them on demand), by (base, backend)."""
        return self._runtime.loaded_per_base()

    async def restore(self) -> None:
        """Place every stored deployment again; one that fails is listed as failed. A base is
        placed once, with every stored adapter deployment on it."""
        await self._restorer.restore()

    async def create(
        self, spec: Any, *, created: int | None = None, record: bool = True
    ) -> DeploymentState:
        """Place `spec` and remember it.

        Args:
            created: when it was created (now unless it was elsewhere).
            record: store it; False for a deployment another replica stored (`sync.py`).

        Raises:
            AlreadyExists: a deployment of that name exists or is being created.
            ForgelineError: the backend could not place it (the message says why).
        """
        name = spec.name
        book = self._book
        if name in book.busy or book.exists(name):
            raise AlreadyExists(
                f"a deployment named '{name}' already exists; delete it first", field="name"
            )
        spec = self._with_defaults(spec)
        book.busy.add(name)
        try:
            if spec.base is not None:
                started = time.monotonic()
                if isinstance(spec, LlamaCppSpec):
                    route = await self._shared.create(spec, created=created, record=record)
                else:
                    route = await self._runtime.create(spec, created=created, record=record)
                state = self._state(route)
                if self.metrics is not None:
                    self.metrics.adapter_attach.labels(spec.backend).observe(
                        time.monotonic() - started
                    )
                return state
            created = int(time.time()) if created is None else created
            route, placed = await self._placer.place(spec, created, publish=False)
            try:
                if record:
                    stored = DeploymentRecord(name, spec.model_dump_json(), created)
                    await self.store.run(lambda: self.store.put_deployment(stored))
            except BaseException:
                await route.backend.release(name, spec, route.placement)
                raise
            book.placed[name] = placed
            self.router.add(route)
            log.info("deployment created", extra={"model": name, "backend": spec.backend})
            return self._state(route)
        finally:
            book.busy.discard(name)

    async def delete(self, name: str) -> None:
        """Stop serving `name` and forget it.

        Raises:
            NotFound: no deployment has that name.
            FailedPrecondition: adapter deployments are served on it (delete them first).
        """
        book = self._book
        if name in book.busy:
            raise AlreadyExists(f"the deployment '{name}' is being changed; retry shortly")
        if name in book.attached:
            if isinstance(book.attached[name].spec, RuntimeAdapterSpec):
                await self._runtime.delete(name)
            else:
                await self._shared.delete(name)
            return
        # Held while adapters are attached to `name`, so it is not removed under one.
        async with book.base_lock(name):
            attached = book.adapters_of(name)
            if attached:
                raise FailedPrecondition(
                    f"the deployment '{name}' is the base of the adapter deployments "
                    f"{', '.join(attached)}: delete them first",
                    field="name",
                )
            failed = book.failed.pop(name, None)
            route = self.router.remove(name)
            if route is None and failed is None:
                raise NotFound(f"there is no deployment named '{name}'", field="name")
            book.busy.add(name)
            try:
                await self.store.run(lambda: self.store.delete_deployment(name))
                self.router.clear_unavailable(name)
                book.placed.pop(name, None)
                await self._runtime.forget_base(name)
                if route is not None:
                    await route.backend.release(name, route.spec, route.placement)
                log.info("deployment deleted", extra={"model": name})
            finally:
                book.busy.discard(name)

    def fail(self, name: str, spec: Any, created: int, error: Exception) -> None:
        """List the stored deployment `name` as failed to place here, for `error`."""
        self._book.fail(name, spec, created, error)

    def changing(self) -> set[str]:
        """The deployments being created or deleted here now."""
        return set(self._book.busy)

    def list(self) -> list[DeploymentState]:
        states = [self._state(route) for route in self.router.routes()]
        states += list(self._book.failed.values())
        return sorted(states, key=lambda s: (s.created, s.spec.name))

    def get(self, name: str) -> DeploymentState:
        for state in self.list():
            if state.spec.name == name:
                return state
        raise NotFound(f"there is no deployment named '{name}'", field="name")

    async def settle(self) -> None:
        """Wait until the old processes of restarted bases have drained and stopped."""
        await self._shared.settle()

    async def close(self) -> None:
        """Release what the backends hold in this process (llama-server processes); stored
        deployments stay, to be restored at the next start."""
        await self._shared.close()
        await self._runtime.close()
        await asyncio.gather(*(backend.close() for backend in self.backends.values()))

    def _with_defaults(self, spec: Any) -> Any:
        if (
            isinstance(spec, VllmSpec)
            and not spec.urls
            and spec.registry_model is None
            and spec.base is None
        ):
            if not self.vllm_urls:
                raise InvalidArgument(
                    "no vLLM server is configured: give 'urls' or set "
                    "FORGELINE_GATEWAY_VLLM_URLS on the gateway",
                    field="urls",
                )
            return spec.model_copy(update={"urls": list(self.vllm_urls)})
        if isinstance(spec, OllamaSpec) and spec.url is None and spec.base is None:
            if not self.ollama_url:
                raise InvalidArgument(
                    "no Ollama server is configured: give 'url' or set "
                    "FORGELINE_GATEWAY_OLLAMA_URL on the gateway",
                    field="url",
                )
            return spec.model_copy(update={"url": self.ollama_url})
        return spec

    def _state(self, route: Route) -> DeploymentState:
        return DeploymentState(
            spec=route.spec,
            created=route.created,
            ready=True,
            instances=len(route.instances),
            adapters=tuple(self._book.attached_to(route.name)),
            loaded_adapters=self._runtime.loaded(route.name),
        )
