"""Deployments: placing specs on backends, keeping them in the store, and in the routing table.

A deployment is stored only once it is placed, and the routing table learns of it last; removing
goes the other way round (routing first, so no new request reaches it). At start, `restore` places
every stored deployment again, so deployments survive a gateway restart.

Adapter deployments (a llama.cpp spec with `base`) are served by their base deployment's
llama-server processes, which load every adapter attached to the base (`backends/llamacpp.py`,
`place_shared`). Attaching or detaching one restarts the base blue-green, one change per base at
a time: new processes start with the new set of adapters and become healthy while the old ones
serve; then the routes of the base and of all its adapters are replaced at once (no await
between the routing-table writes, so no request sees half of it); the old processes are released
once the requests in flight on them, streams included, have finished (`_drain`). A request that
took a route before the switch keeps the old processes and the adapter ids valid in them: each
route carries its own instances and its own ``lora`` selection (`Placement.request_fields`). At
start, a base is placed once with all its stored adapters.

Adapter deployments on a vLLM base (a vLLM spec with `base` and `registry_adapter`) need no
restart: vLLM loads and unloads LoRA adapters in the running server (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``), so attaching one loads it on every instance of the base's
container and publishes its route on those same instances (`_attach_vllm`); detaching removes
the route, then unloads it. Requests for the base and its other adapters never notice. Up to the
base's ``max_adapters`` may be attached, of which at most ``max_loaded_adapters`` are loaded at
a time: each adapter's route carries a gate of the base's `AdapterResidency`, which loads an
unloaded adapter before its request is sent, unloading the least recently used idle one to make
room (``adapter_residency.py``). ``max_lora_rank`` bounds each adapter. At start, the base is
placed (its container re-attached or started again), every stored adapter is attached, and up
to the limit loaded: those the server still holds first, then the oldest.

Adapter deployments on an Ollama base (an Ollama spec with `base` and `lora` or `registry_lora`)
are attached at runtime the same way, as Ollama models of their own: attaching creates one on
the base's server ``from`` the base's model with the GGUF adapters (`OllamaBackend.
attach_adapter`, `_attach_ollama`) and publishes its route on the base's instances; detaching
removes the route, then deletes that model. Ollama loads each model when a request asks for it.
At start, the base is created again in Ollama, then each stored adapter.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from forgeline_gateway.backends.base import Backend, Placement
from forgeline_gateway.backends.llamacpp import LlamaCppBackend, SharedPlacement
from forgeline_gateway.backends.ollama import OllamaBackend
from forgeline_gateway.backends.vllm import VllmBackend, read_adapter_rank
from forgeline_gateway.deployments.adapter_residency import AdapterResidency
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_gateway.deployments.boundaries import DeploymentBoundaries
from forgeline_gateway.deployments.spec import DeploymentSpec, LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.metrics import GatewayMetrics
from forgeline_gateway.routing.gate import RequestGate
from forgeline_gateway.routing.router import Instance, Route, Router
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    ForgelineError,
    InvalidArgument,
    NotFound,
)

__all__ = ["DeploymentManager", "DeploymentState"]

log = logging.getLogger(__name__)

_SPEC: TypeAdapter[DeploymentSpec] = TypeAdapter(DeploymentSpec)

#: The specs of adapter deployments attached to a running base, with no restart of it.
_RuntimeAdapterSpec = VllmSpec | OllamaSpec

#: How long old processes of a restarted base wait before they count their requests in flight:
#: a request that took the old route just before the switch has reached its instance by then.
DRAIN_GRACE_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class DeploymentState:
    """A deployment as the admin API shows it."""

    spec: Any
    created: int
    ready: bool
    instances: int
    error: str | None = None
    #: For a base deployment: the adapter deployments served on its processes.
    adapters: tuple[str, ...] = ()
    #: For a vLLM base deployment: those of `adapters` loaded in its server now.
    loaded_adapters: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Attached:
    """An adapter deployment placed on its base: what the base's processes load for it."""

    spec: DeploymentSpec
    #: Its adapter files on the gateway host (registry versions pulled into the model cache);
    #: none for vLLM, which reads the adapter from its own mount of the cache, and for Ollama,
    #: which holds them once attached.
    files: tuple[str, ...]
    created: int

    @property
    def base(self) -> str:
        assert self.spec.base is not None
        return self.spec.base


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
        self.max_in_flight = max_in_flight
        self.queue_per_instance = queue_per_instance
        self.vllm_urls = vllm_urls
        self.ollama_url = ollama_url
        self.artifacts = artifacts
        self.boundaries = boundaries
        self.drain_seconds = drain_seconds
        self.metrics = metrics
        self.retry_after = retry_after
        self.adapter_wait_seconds = adapter_wait_seconds
        self._busy: set[str] = set()
        self._failed: dict[str, DeploymentState] = {}
        #: Each placed deployment's spec with its files local: a base is restarted from it.
        self._placed: dict[str, Any] = {}
        #: Adapter deployments placed on their bases, by name.
        self._attached: dict[str, _Attached] = {}
        self._base_locks: dict[str, asyncio.Lock] = {}
        self._drains: set[asyncio.Task[None]] = set()
        #: The adapters loaded on each vLLM base, by the base's name.
        self._residency: dict[str, AdapterResidency] = {}

    def adapters_per_base(self) -> dict[tuple[str, str], int]:
        """How many adapter deployments each base deployment serves, by (base, backend)."""
        counts: dict[tuple[str, str], int] = {}
        for attached in self._attached.values():
            key = (attached.base, attached.spec.backend)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def loaded_adapters_per_base(self) -> dict[tuple[str, str], int]:
        """How many adapters are loaded now in each base deployment's server (vLLM bases,
        which load them on demand), by (base, backend)."""
        return {(base, r.backend): len(r.loaded) for base, r in self._residency.items()}

    async def restore(self) -> None:
        """Place every stored deployment again; one that fails is listed as failed. A base is
        placed once, with every stored adapter deployment on it."""
        records = await self.store.run(self.store.list_deployments)
        specs = {r.name: (_SPEC.validate_json(r.spec_json), r.created_at) for r in records}
        on_base: dict[str, dict[str, tuple[DeploymentSpec, int]]] = {}
        for name, (spec, created) in specs.items():
            if spec.base is not None:
                on_base.setdefault(spec.base, {})[name] = (spec, created)

        async def restore_one(name: str, spec: Any, created: int) -> None:
            attached = on_base.pop(name, {})
            try:
                await self._place(spec, created, attached=attached)
            except Exception as error:
                self._restore_failed(name, spec, created, error)
                for child, (child_spec, child_created) in attached.items():
                    self._restore_failed(
                        child,
                        child_spec,
                        child_created,
                        FailedPrecondition(f"its base deployment '{name}' could not be placed"),
                    )

        await asyncio.gather(
            *(
                restore_one(name, spec, created)
                for name, (spec, created) in specs.items()
                if spec.base is None
            )
        )
        for base, orphans in on_base.items():
            for child, (child_spec, child_created) in orphans.items():
                self._restore_failed(
                    child,
                    child_spec,
                    child_created,
                    FailedPrecondition(f"its base deployment '{base}' does not exist"),
                )

    def _restore_failed(self, name: str, spec: Any, created: int, error: Exception) -> None:
        message = error.message if isinstance(error, ForgelineError) else repr(error)
        log.error("deployment could not be restored", extra={"model": name, "error": message})
        self._failed[name] = DeploymentState(
            spec=spec, created=created, ready=False, instances=0, error=message
        )
        self.router.mark_unavailable(name, message)

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
            if spec.base is not None:
                started = time.monotonic()
                if isinstance(spec, LlamaCppSpec):
                    state = await self._create_attached(spec)
                else:
                    state = await self._create_runtime_attached(spec)
                if self.metrics is not None:
                    self.metrics.adapter_attach.labels(spec.backend).observe(
                        time.monotonic() - started
                    )
                return state
            created = int(time.time())
            route, placed = await self._place(spec, created, publish=False)
            try:
                record = DeploymentRecord(name, spec.model_dump_json(), created)
                await self.store.run(lambda: self.store.put_deployment(record))
            except BaseException:
                await route.backend.release(name, spec, route.placement)
                raise
            self._placed[name] = placed
            self.router.add(route)
            log.info("deployment created", extra={"model": name, "backend": spec.backend})
            return self._state(route)
        finally:
            self._busy.discard(name)

    async def delete(self, name: str) -> None:
        """Stop serving `name` and forget it.

        Raises:
            NotFound: no deployment has that name.
            FailedPrecondition: adapter deployments are served on it (delete them first).
        """
        if name in self._busy:
            raise AlreadyExists(f"the deployment '{name}' is being changed; retry shortly")
        if name in self._attached:
            if isinstance(self._attached[name].spec, _RuntimeAdapterSpec):
                await self._delete_runtime_attached(name)
            else:
                await self._delete_attached(name)
            return
        # Held while adapters are attached to `name`, so it is not removed under one.
        async with self._base_lock(name):
            attached = self._adapters_of(name)
            if attached:
                raise FailedPrecondition(
                    f"the deployment '{name}' is the base of the adapter deployments "
                    f"{', '.join(attached)}: delete them first",
                    field="name",
                )
            failed = self._failed.pop(name, None)
            route = self.router.remove(name)
            if route is None and failed is None:
                raise NotFound(f"there is no deployment named '{name}'", field="name")
            self._busy.add(name)
            try:
                await self.store.run(lambda: self.store.delete_deployment(name))
                self.router.clear_unavailable(name)
                self._placed.pop(name, None)
                residency = self._residency.pop(name, None)
                if residency is not None:
                    await residency.close()
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

    async def settle(self) -> None:
        """Wait until the old processes of restarted bases have drained and stopped."""
        while self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    async def close(self) -> None:
        """Release what the backends hold in this process (llama-server processes); stored
        deployments stay, to be restored at the next start."""
        drains = list(self._drains)
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self._residency.values()))
        await asyncio.gather(*(backend.close() for backend in self.backends.values()))

    # --- placing -------------------------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        try:
            self.router.get(name)
        except ForgelineError:
            return name in self._failed
        return True

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

    def _backend(self, spec: Any) -> Backend[Any]:
        backend = self.backends.get(spec.backend)
        if backend is None:
            raise InvalidArgument(
                f"the backend '{spec.backend}' is not enabled on this gateway", field="backend"
            )
        return backend

    async def _localize(self, spec: Any) -> Any:
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

    async def _place(
        self,
        spec: Any,
        created: int,
        *,
        publish: bool = True,
        attached: Mapping[str, tuple[DeploymentSpec, int]] | None = None,
    ) -> tuple[Route, Any]:
        """Place `spec` (with `attached`, a base with these adapter deployments: at restore);
        its route and its localized spec."""
        backend = self._backend(spec)
        if attached and isinstance(backend, VllmBackend | OllamaBackend):
            # vLLM and Ollama take adapters while running: the base first, then each of them
            # attached (oldest first); then, on vLLM, up to its limit loaded.
            route, placed = await self._place(spec, created, publish=publish)
            for name, (child, child_created) in sorted(
                attached.items(), key=lambda item: (item[1][1], item[0])
            ):
                try:
                    if not isinstance(child, _RuntimeAdapterSpec) or child.backend != spec.backend:
                        raise InvalidArgument(
                            f"its base '{spec.name}' is not a {child.backend} deployment",
                            field="base",
                        )
                    await self._attach_at_runtime(child, child_created, load=False)
                except Exception as error:
                    self._restore_failed(name, child, child_created, error)
            if isinstance(backend, VllmBackend):
                await self._load_restored(route)
            return route, placed
        placed = await self._localize(spec)
        # A base restored with its adapters: one start of its processes for all of them.
        adapters: dict[str, _Attached] = {}
        for name, (child, child_created) in (attached or {}).items():
            try:
                if not isinstance(backend, LlamaCppBackend) or not isinstance(child, LlamaCppSpec):
                    raise InvalidArgument(
                        f"its base '{spec.name}' is not a {child.backend} deployment that can "
                        "carry adapters",
                        field="base",
                    )
                adapters[name] = await self._attachable(child, child_created)
            except Exception as error:
                self._restore_failed(name, child, child_created, error)
        if not adapters or not isinstance(backend, LlamaCppBackend):
            placement = await backend.place(spec.name, placed)
            route = self._route(spec, backend, placement, created)
            if publish:
                self._publish([route])
                self._placed[spec.name] = placed
            return route, placed
        shared = await backend.place_shared(
            spec.name, placed, {name: a.files for name, a in adapters.items()}
        )
        routes = self._shared_routes(spec, created, backend, shared, adapters)
        self._publish(routes)
        self._placed[spec.name] = placed
        self._attached.update(adapters)
        return routes[0], placed

    def _publish(self, routes: Sequence[Route]) -> None:
        for route in routes:
            self._failed.pop(route.name, None)
            self.router.clear_unavailable(route.name)
            self.router.add(route)

    def _route(
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

    # --- adapters on a shared base -------------------------------------------------------------

    def _adapters_of(self, base: str) -> builtins.list[str]:
        """The adapter deployments, placed or failed, whose base is `base`."""
        names = [n for n, a in self._attached.items() if a.base == base]
        names += [n for n, s in self._failed.items() if getattr(s.spec, "base", None) == base]
        return sorted(names)

    def _base_lock(self, base: str) -> asyncio.Lock:
        return self._base_locks.setdefault(base, asyncio.Lock())

    def _running_base(self, base: str, kind: str) -> Route:
        """The route of `base`, the base deployment named by an adapter deployment of `kind`
        (``a llama.cpp``...).

        Raises:
            InvalidArgument: naming `base`, when no deployment of that name is serving.
        """
        try:
            return self.router.get(base)
        except ForgelineError:
            state = (
                "is not serving (GET /v1/deployments says why)"
                if base in self._failed
                else "does not exist"
            )
            raise InvalidArgument(
                f"the base deployment '{base}' {state}: adapters are served on {kind} "
                "deployment that is serving",
                field="base",
            ) from None

    async def _attachable(self, spec: LlamaCppSpec, created: int) -> _Attached:
        """An adapter deployment with its files local, ready to load on its base."""
        placed = await self._localize(spec)
        return _Attached(spec=spec, files=tuple(placed.lora), created=created)

    def _serving_base(self, spec: LlamaCppSpec) -> Route:
        """The route of `spec`'s base, once it is known to carry adapters.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or one that
                cannot carry adapters.
        """
        assert spec.base is not None
        base = spec.base
        route = self._running_base(base, "a llama.cpp")
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

    # --- adapters on a vLLM base: loaded at runtime ------------------------------------------

    def _serving_vllm_base(self, spec: VllmSpec) -> Route:
        """The route of `spec`'s base, once it is known to take runtime LoRA adapters.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or not a
                vLLM container started with `enable_lora`.
        """
        assert spec.base is not None
        route = self._running_base(spec.base, "a vLLM")
        base = route.spec
        if not isinstance(base, VllmSpec) or base.registry_model is None or not base.enable_lora:
            raise InvalidArgument(
                f"the deployment '{spec.base}' cannot carry vLLM adapters: a base is a vLLM "
                "'registry_model' deployment created with 'enable_lora': true",
                field="base",
            )
        return route

    def _residency_of(self, base: Route) -> AdapterResidency:
        """The adapters loaded on the vLLM base `base` (made at its first adapter)."""
        residency = self._residency.get(base.name)
        if residency is None:
            spec, backend, placement = base.spec, base.backend, base.placement
            assert isinstance(spec, VllmSpec)
            assert isinstance(backend, VllmBackend)

            async def unload(name: str) -> None:
                await backend.unload_adapter(name, placement)

            residency = self._residency[base.name] = AdapterResidency(
                base.name,
                backend.kind,
                limit=spec.loaded_adapter_limit,
                unload=unload,
                retry_after=self.retry_after,
                wait_seconds=self.adapter_wait_seconds,
                metrics=self.metrics,
            )
        return residency

    async def _load_restored(self, base: Route) -> None:
        """Load the adapters just attached to the restored vLLM base `base`, up to its limit:
        first those its server still holds (a container that kept running), then the oldest.
        What the server holds past the limit, or of adapters no longer deployed, is unloaded
        first, so it never holds more than the limit. An adapter that fails to load is listed
        as failed."""
        residency = self._residency.get(base.name)
        if residency is None:
            return
        backend = base.backend
        assert isinstance(backend, VllmBackend)
        try:
            held = await backend.loaded_adapters(base.placement)
        except ForgelineError:
            held = set()
        attached = residency.attached
        keep = [n for n in attached if n in held][: residency.limit]
        keep += [n for n in attached if n not in held][: residency.limit - len(keep)]
        await residency.unload_others(sorted(held - set(keep)))
        for name in keep:
            if name in held and residency.adopt(name):
                continue
            try:
                await residency.load(name, "restore")
            except Exception as error:
                child = self._attached.pop(name)
                self.router.remove(name)
                await residency.detach(name)
                self._restore_failed(name, child.spec, child.created, error)

    async def _attach_vllm(
        self,
        spec: VllmSpec,
        created: int,
        commit: Callable[[], Awaitable[None]] | None = None,
        *,
        load: bool = True,
    ) -> Route:
        """Attach the adapter deployment `spec` to its base: with `load`, loaded on the base's
        instances now (so vLLM checks it; an idle adapter may be unloaded to make room), then
        run `commit` (the store's change), and publish its route, whose gate loads it again
        whenever it was unloaded. A failure before the route is published leaves nothing
        attached. Called with the base's lock held (or at restore, before any request)."""
        base = self._serving_vllm_base(spec)
        base_spec = base.spec
        assert isinstance(base_spec, VllmSpec)
        assert spec.base is not None
        held = [n for n, a in self._attached.items() if a.base == spec.base]
        if len(held) >= base_spec.max_adapters:
            raise InvalidArgument(
                f"the base deployment '{spec.base}' already serves {len(held)} adapters, its "
                "max_adapters: delete one first, or deploy the base with a larger "
                "'max_adapters'",
                field="base",
            )
        placed = await self._localize(spec)
        assert isinstance(placed, VllmSpec)
        assert placed.model_directory is not None
        rank = await asyncio.to_thread(read_adapter_rank, placed.model_directory)
        if rank > base_spec.max_lora_rank:
            raise InvalidArgument(
                f"the adapter {spec.registry_adapter} has rank {rank}, above the base "
                f"deployment '{spec.base}''s max_lora_rank ({base_spec.max_lora_rank}): deploy "
                "the base with a larger 'max_lora_rank'",
                field="registry_adapter",
            )
        backend = base.backend
        assert isinstance(backend, VllmBackend)
        residency = self._residency_of(base)
        base_placement = base.placement

        async def load_it() -> None:
            await backend.load_adapter(spec.name, placed, base_placement)

        residency.attach(spec.name, load_it)
        try:
            if load:
                await residency.load(spec.name, "attach")
            if commit is not None:
                await commit()
        except BaseException:
            await residency.detach(spec.name)
            raise
        placement = backend.adapter_placement(spec.name, base_placement)
        route = self._adapter_route(spec, base, placement, created, gate=residency.gate(spec.name))
        self._publish([route])
        self._attached[spec.name] = _Attached(spec=spec, files=(), created=created)
        return route

    async def _attach_at_runtime(
        self,
        spec: _RuntimeAdapterSpec,
        created: int,
        commit: Callable[[], Awaitable[None]] | None = None,
        *,
        load: bool = True,
    ) -> Route:
        """Attach the adapter deployment `spec` to its running base (`_attach_vllm`,
        `_attach_ollama`; `load` is vLLM's); called with the base's lock held (or at restore)."""
        if isinstance(spec, VllmSpec):
            return await self._attach_vllm(spec, created, commit, load=load)
        return await self._attach_ollama(spec, created, commit)

    def _adapter_route(
        self,
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

    # --- adapters on an Ollama base: an Ollama model each --------------------------------------

    def _serving_ollama_base(self, spec: OllamaSpec) -> Route:
        """The route of `spec`'s base, once it is known to be an Ollama model adapters can be
        created from.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or not an
                Ollama deployment of a generation model's GGUF.
        """
        assert spec.base is not None
        route = self._running_base(spec.base, "an Ollama")
        base = route.spec
        if not isinstance(base, OllamaSpec) or base.base is not None or base.embeddings:
            raise InvalidArgument(
                f"the deployment '{spec.base}' cannot carry Ollama adapters: a base is an Ollama "
                "deployment of a generation model ('gguf' or 'registry_gguf'), not an adapter "
                "deployment itself",
                field="base",
            )
        return route

    async def _attach_ollama(
        self,
        spec: OllamaSpec,
        created: int,
        commit: Callable[[], Awaitable[None]] | None = None,
    ) -> Route:
        """Create the adapter deployment `spec` as an Ollama model on its base's server, run
        `commit` (the store's change), and publish its route on the base's instances; a failure
        before the route is published deletes the model again. The base's model and its other
        adapters' are untouched, so their requests go on."""
        base = self._serving_ollama_base(spec)
        placed = await self._localize(spec)
        backend = base.backend
        assert isinstance(backend, OllamaBackend)
        placement = await backend.attach_adapter(spec.name, placed, base.placement)
        try:
            if commit is not None:
                await commit()
        except BaseException:
            await backend.release(spec.name, spec, placement)
            raise
        route = self._adapter_route(spec, base, placement, created)
        self._publish([route])
        self._attached[spec.name] = _Attached(spec=spec, files=(), created=created)
        return route

    async def _create_runtime_attached(self, spec: _RuntimeAdapterSpec) -> DeploymentState:
        assert spec.base is not None
        created = int(time.time())
        record = DeploymentRecord(spec.name, spec.model_dump_json(), created)
        async with self._base_lock(spec.base):
            route = await self._attach_at_runtime(
                spec,
                created,
                commit=lambda: self.store.run(lambda: self.store.put_deployment(record)),
            )
        log.info("adapter deployment created", extra={"model": spec.name, "base": spec.base})
        return self._state(route)

    async def _delete_runtime_attached(self, name: str) -> None:
        attached = self._attached[name]
        self._busy.add(name)
        try:
            residency: AdapterResidency | None = None
            async with self._base_lock(attached.base):
                await self.store.run(lambda: self.store.delete_deployment(name))
                # No new request reaches it, then the backend forgets it; the base and the
                # other adapters are untouched, their requests in flight included.
                route = self.router.remove(name)
                self._attached.pop(name, None)
                if isinstance(attached.spec, VllmSpec):
                    residency = self._residency[attached.base]
                elif route is not None:
                    await route.backend.release(name, route.spec, route.placement)
            if residency is not None:
                # Its own requests in flight finish first; outside the base's lock, so the
                # base's other adapters can change meanwhile. The name stays busy: it cannot
                # be deployed again before vLLM has unloaded it.
                await residency.retire(name, within=self.drain_seconds)
            log.info("adapter deployment deleted", extra={"model": name, "base": attached.base})
        finally:
            self._busy.discard(name)

    async def _create_attached(self, spec: LlamaCppSpec) -> DeploymentState:
        assert spec.base is not None
        async with self._base_lock(spec.base):
            base = self._serving_base(spec)
            attached = await self._attachable(spec, int(time.time()))
            record = DeploymentRecord(spec.name, spec.model_dump_json(), attached.created)
            adapters = {n: a for n, a in self._attached.items() if a.base == spec.base}
            await self._restart_base(
                base,
                adapters | {spec.name: attached},
                commit=lambda: self.store.run(lambda: self.store.put_deployment(record)),
            )
        log.info("adapter deployment created", extra={"model": spec.name, "base": spec.base})
        return self._state(self.router.get(spec.name))

    async def _delete_attached(self, name: str) -> None:
        attached = self._attached[name]
        self._busy.add(name)
        try:
            async with self._base_lock(attached.base):
                base = self.router.get(attached.base)
                adapters = {
                    n: a for n, a in self._attached.items() if a.base == attached.base and n != name
                }
                await self._restart_base(
                    base,
                    adapters,
                    commit=lambda: self.store.run(lambda: self.store.delete_deployment(name)),
                    detached=(name,),
                )
            log.info("adapter deployment deleted", extra={"model": name, "base": attached.base})
        finally:
            self._busy.discard(name)

    async def _restart_base(
        self,
        base: Route,
        adapters: dict[str, _Attached],
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
        placed = self._placed[base.name]
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
                if name not in self._attached:
                    await backend.release(name, child, placement)
            raise
        old_detached = [self.router.get(n) for n in detached]
        routes = self._shared_routes(base.spec, base.created, backend, shared, adapters)
        # The switch: the routing table and the bookkeeping change together, with no await.
        for route in routes:
            self.router.add(route)
        for name in detached:
            self.router.remove(name)
            self._attached.pop(name, None)
        self._attached.update(adapters)
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
        adapters: Mapping[str, _Attached],
    ) -> builtins.list[Route]:
        """The base's route, then each adapter deployment's, all on the same instances: the
        bound on requests in flight is the base's, per process, whatever they ask for."""
        base = self._route(spec, backend, shared.base, created)
        routes = [base]
        for name, attached in adapters.items():
            routes.append(
                self._adapter_route(attached.spec, base, shared.adapters[name], attached.created)
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

    def _state(self, route: Route) -> DeploymentState:
        return DeploymentState(
            spec=route.spec,
            created=route.created,
            ready=True,
            instances=len(route.instances),
            adapters=tuple(n for n, a in self._attached.items() if a.base == route.name),
            loaded_adapters=(
                self._residency[route.name].loaded if route.name in self._residency else ()
            ),
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
