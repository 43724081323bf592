"""Adapter deployments on a shared llama.cpp base: `SharedBaseAdapters`.

Adapter deployments (a llama.cpp spec with `base`) are served by their base deployment's
llama-server processes, which load every adapter attached to the base (`backends/llamacpp.py`,
`place_shared`). Attaching or detaching one restarts the base blue-green, one change per base at
a time: new processes start with the new set of adapters and become healthy while the old ones
serve; then the routes of the base and of all its adapters are replaced at once (no await
between the routing-table writes, so no request sees half of it); the old processes are released
once the requests in flight on them, streams included, have finished (`_drain`). A request that
took a route before the switch keeps the old processes and the adapter ids valid in them: each
route carries its own instances and its own ``lora`` selection (`Placement.request_fields`). At
start, a base is placed once with all its stored adapters (`place_with_adapters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from forgeline_gateway.backends.base import Backend, Placement
from forgeline_gateway.backends.llamacpp import LlamaCppBackend, SharedPlacement
from forgeline_gateway.deployments.bookkeeping import AttachedAdapter, DeploymentBook
from forgeline_gateway.deployments.placing import Placer, adapter_route
from forgeline_gateway.deployments.spec import LlamaCppSpec
from forgeline_gateway.routing.router import Instance, Route
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import InvalidArgument

__all__ = ["DRAIN_GRACE_SECONDS", "SharedBaseAdapters"]

log = logging.getLogger(__name__)

#: How long old processes of a restarted base wait before they count their requests in flight:
#: a request that took the old route just before the switch has reached its instance by then.
DRAIN_GRACE_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.05


class SharedBaseAdapters:
    """Attaches adapter deployments to llama.cpp bases and detaches them, restarting the base
    blue-green each time, and drains the processes the restarts replace."""

    def __init__(
        self, book: DeploymentBook, placer: Placer, store: Store, *, drain_seconds: float
    ) -> None:
        """
        Args:
            drain_seconds: how long the old processes of a restarted base serve the requests
                in flight on them before they are stopped anyway.
        """
        self.book = book
        self.placer = placer
        self.store = store
        self.drain_seconds = drain_seconds
        self._drains: set[asyncio.Task[None]] = set()

    async def create(
        self, spec: LlamaCppSpec, *, created: int | None = None, record: bool = True
    ) -> Route:
        """Attach the adapter deployment `spec` to its base and store it (unless not to
        `record`: another replica did); its route."""
        assert spec.base is not None
        async with self.book.base_lock(spec.base):
            base = self._serving_base(spec)
            attached = await self.attachable(spec, int(time.time()) if created is None else created)
            stored = DeploymentRecord(spec.name, spec.model_dump_json(), attached.created)

            async def commit() -> None:
                if record:
                    await self.store.run(lambda: self.store.put_deployment(stored))

            adapters = self.book.attached_to(spec.base)
            await self._restart_base(base, adapters | {spec.name: attached}, commit=commit)
        log.info("adapter deployment created", extra={"model": spec.name, "base": spec.base})
        return self.book.router.get(spec.name)

    async def delete(self, name: str) -> None:
        """Detach the adapter deployment `name` from its base and forget it."""
        attached = self.book.attached[name]
        self.book.busy.add(name)
        try:
            async with self.book.base_lock(attached.base):
                base = self.book.router.get(attached.base)
                adapters = {
                    n: a for n, a in self.book.attached_to(attached.base).items() if n != name
                }
                await self._restart_base(
                    base,
                    adapters,
                    commit=lambda: self.store.run(lambda: self.store.delete_deployment(name)),
                    detached=(name,),
                )
            log.info("adapter deployment deleted", extra={"model": name, "base": attached.base})
        finally:
            self.book.busy.discard(name)

    async def attachable(self, spec: LlamaCppSpec, created: int) -> AttachedAdapter:
        """An adapter deployment with its files local, ready to load on its base."""
        placed = await self.placer.localize(spec)
        return AttachedAdapter(spec=spec, files=tuple(placed.lora), created=created)

    async def place_with_adapters(
        self,
        spec: LlamaCppSpec,
        backend: LlamaCppBackend,
        placed: LlamaCppSpec,
        created: int,
        adapters: dict[str, AttachedAdapter],
    ) -> Route:
        """Place the base deployment `spec` (localized as `placed`) with `adapters` loaded, one
        start of its processes for all of them, and publish every route; the base's route."""
        shared = await backend.place_shared(
            spec.name, placed, {name: a.files for name, a in adapters.items()}
        )
        routes = self._shared_routes(spec, created, backend, shared, adapters)
        self.book.publish(routes)
        self.book.placed[spec.name] = placed
        self.book.attached.update(adapters)
        return routes[0]

    async def settle(self) -> None:
        """Wait until the old processes of restarted bases have drained and stopped."""
        while self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    async def close(self) -> None:
        """Stop draining: the old processes are released now."""
        drains = list(self._drains)
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)

    def _serving_base(self, spec: LlamaCppSpec) -> Route:
        """The route of `spec`'s base, once it is known to carry adapters.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or one that
                cannot carry adapters.
        """
        assert spec.base is not None
        base = spec.base
        route = self.book.running_base(base, "a llama.cpp")
        base_spec = route.spec
        if (
            not isinstance(base_spec, LlamaCppSpec)
            or base_spec.adapter
            or base_spec.urls
            or base_spec.embeddings
        ):
            raise InvalidArgument(
                f"the deployment '{base}' cannot carry adapters: a base is a llama.cpp "
                "deployment of generation whose processes the gateway starts ('gguf' or "
                "'registry_gguf'), not an adapter deployment itself",
                field="base",
            )
        return route

    async def _restart_base(
        self,
        base: Route,
        adapters: dict[str, AttachedAdapter],
        *,
        commit: Callable[[], Awaitable[None]],
        detached: tuple[str, ...] = (),
    ) -> None:
        """Serve `base` and exactly `adapters` on new processes, blue-green: start them, run
        `commit` (the store's change), switch every route of the base at once, and release the
        old processes once drained. Until the switch nothing changes for clients; a failure
        before it stops the new processes and leaves everything as it was."""
        backend = base.backend
        assert isinstance(backend, LlamaCppBackend)
        book = self.book
        placed = book.placed[base.name]
        shared = await backend.place_shared(
            base.name, placed, {name: a.files for name, a in adapters.items()}
        )
        try:
            await commit()
        except BaseException:
            await backend.release(base.name, placed, shared.base)
            for name, placement in shared.adapters.items():
                child = adapters[name].spec
                assert isinstance(child, LlamaCppSpec)  # a llama.cpp base carries only these
                if name not in book.attached:
                    await backend.release(name, child, placement)
            raise
        old_detached = [book.router.get(n) for n in detached]
        routes = self._shared_routes(base.spec, base.created, backend, shared, adapters)
        # The switch: the routing table and the bookkeeping change together, with no await.
        for route in routes:
            book.router.add(route)
        for name in detached:
            book.router.remove(name)
            book.attached.pop(name, None)
        book.attached.update(adapters)
        releases = [(base.name, placed, base.placement)]
        releases += [(r.name, r.spec, r.placement) for r in old_detached]
        task = asyncio.create_task(
            self._drain(backend, base.instances, releases), name=f"drain {base.name}"
        )
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def _shared_routes(
        self,
        spec: LlamaCppSpec,
        created: int,
        backend: LlamaCppBackend,
        shared: SharedPlacement,
        adapters: Mapping[str, AttachedAdapter],
    ) -> list[Route]:
        """The base's route, then each adapter deployment's, all on the same instances: the
        bound on requests in flight is the base's, per process, whatever they ask for."""
        base = self.placer.route(spec, backend, shared.base, created)
        routes = [base]
        for name, attached in adapters.items():
            routes.append(
                adapter_route(attached.spec, base, shared.adapters[name], attached.created)
            )
        return routes

    async def _drain(
        self,
        backend: Backend[Any],
        instances: Sequence[Instance],
        releases: Sequence[tuple[str, Any, Placement]],
    ) -> None:
        """Release `releases` once no request is in flight on `instances` (or after
        `drain_seconds`)."""
        try:
            await asyncio.sleep(DRAIN_GRACE_SECONDS)
            deadline = time.monotonic() + self.drain_seconds
            # `in_flight` is a plain counter on the hot path: polled here rather than signalled
            # by every request that ends.
            while any(i.in_flight > 0 for i in instances) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_DRAIN_POLL_SECONDS)
            if any(i.in_flight > 0 for i in instances):
                log.warning(
                    "old processes stopped with requests in flight",
                    extra={"model": releases[0][0], "drain_seconds": self.drain_seconds},
                )
        finally:
            for name, spec, placement in releases:
                with contextlib.suppress(Exception):
                    await backend.release(name, spec, placement)
            log.info("old processes drained and stopped", extra={"model": releases[0][0]})
