"""Adapter deployments attached to a running vLLM or Ollama base: `RuntimeAdapters`.

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
to the limit loaded: those the server still holds first, then the oldest (`load_restored`).

Adapter deployments on an Ollama base (an Ollama spec with `base` and `lora` or `registry_lora`)
are attached at runtime the same way, as Ollama models of their own: attaching creates one on
the base's server ``from`` the base's model with the GGUF adapters (`OllamaBackend.
attach_adapter`, `_attach_ollama`) and publishes its route on the base's instances; detaching
removes the route, then deletes that model. Ollama loads each model when a request asks for it.
At start, the base is created again in Ollama, then each stored adapter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from forgeline_gateway.backends.ollama import OllamaBackend
from forgeline_gateway.backends.vllm import VllmBackend, read_adapter_rank
from forgeline_gateway.deployments.adapter_residency import AdapterResidency
from forgeline_gateway.deployments.bookkeeping import AttachedAdapter, DeploymentBook
from forgeline_gateway.deployments.placing import Placer, adapter_route
from forgeline_gateway.deployments.spec import OllamaSpec, VllmSpec
from forgeline_gateway.metrics import GatewayMetrics
from forgeline_gateway.routing.router import Route
from forgeline_gateway.store import DeploymentRecord, Store
from forgeline_kit.errors import ForgelineError, InvalidArgument

__all__ = ["RuntimeAdapterSpec", "RuntimeAdapters"]

log = logging.getLogger(__name__)

#: The specs of adapter deployments attached to a running base, with no restart of it.
RuntimeAdapterSpec = VllmSpec | OllamaSpec


class RuntimeAdapters:
    """Attaches adapter deployments to running vLLM and Ollama bases and detaches them, and
    keeps which adapters each vLLM base has loaded."""

    def __init__(
        self,
        book: DeploymentBook,
        placer: Placer,
        store: Store,
        *,
        drain_seconds: float,
        retry_after: int,
        adapter_wait_seconds: float,
        metrics: GatewayMetrics | None,
    ) -> None:
        """
        Args:
            drain_seconds: how long a deleted vLLM adapter stays loaded for its own requests in
                flight.
            retry_after: the Retry-After of a request for an unloaded adapter refused because
                every adapter loaded on its base stays busy.
            adapter_wait_seconds: how long such a request waits for one to become idle.
            metrics: where each vLLM base's adapter loads, unloads and load times are counted.
        """
        self.book = book
        self.placer = placer
        self.store = store
        self.drain_seconds = drain_seconds
        self.retry_after = retry_after
        self.adapter_wait_seconds = adapter_wait_seconds
        self.metrics = metrics
        #: The adapters loaded on each vLLM base, by the base's name.
        self.residency: dict[str, AdapterResidency] = {}

    def loaded(self, base: str) -> tuple[str, ...]:
        """The adapters loaded now on the vLLM base `base` (none for any other deployment)."""
        return self.residency[base].loaded if base in self.residency else ()

    def loaded_per_base(self) -> dict[tuple[str, str], int]:
        """How many adapters are loaded now on each vLLM base, by (base, backend)."""
        return {(base, r.backend): len(r.loaded) for base, r in self.residency.items()}

    async def create(
        self, spec: RuntimeAdapterSpec, *, created: int | None = None, record: bool = True
    ) -> Route:
        """Attach the adapter deployment `spec` to its running base and store it (unless not to
        `record`: another replica did); its route."""
        assert spec.base is not None
        created = int(time.time()) if created is None else created
        stored = DeploymentRecord(spec.name, spec.model_dump_json(), created)

        async def commit() -> None:
            if record:
                await self.store.run(lambda: self.store.put_deployment(stored))

        async with self.book.base_lock(spec.base):
            route = await self.attach(spec, created, commit=commit)
        log.info("adapter deployment created", extra={"model": spec.name, "base": spec.base})
        return route

    async def delete(self, name: str) -> None:
        """Detach the adapter deployment `name` from its base and forget it."""
        book = self.book
        attached = book.attached[name]
        book.busy.add(name)
        try:
            residency: AdapterResidency | None = None
            async with book.base_lock(attached.base):
                await self.store.run(lambda: self.store.delete_deployment(name))
                # No new request reaches it, then the backend forgets it; the base and the
                # other adapters are untouched, their requests in flight included.
                route = book.router.remove(name)
                book.attached.pop(name, None)
                if isinstance(attached.spec, VllmSpec):
                    residency = self.residency[attached.base]
                elif route is not None:
                    await route.backend.release(name, route.spec, route.placement)
            if residency is not None:
                # Its own requests in flight finish first; outside the base's lock, so the
                # base's other adapters can change meanwhile. The name stays busy: it cannot
                # be deployed again before vLLM has unloaded it.
                await residency.retire(name, within=self.drain_seconds)
            log.info("adapter deployment deleted", extra={"model": name, "base": attached.base})
        finally:
            book.busy.discard(name)

    async def attach(
        self,
        spec: RuntimeAdapterSpec,
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

    async def forget_base(self, base: str) -> None:
        """The deployment `base` is deleted: unload what its server holds for adapters."""
        residency = self.residency.pop(base, None)
        if residency is not None:
            await residency.close()

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.residency.values()))

    # --- adapters on a vLLM base: loaded at runtime ------------------------------------------

    def _serving_vllm_base(self, spec: VllmSpec) -> Route:
        """The route of `spec`'s base, once it is known to take runtime LoRA adapters.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or not a
                vLLM container started with `enable_lora`.
        """
        assert spec.base is not None
        route = self.book.running_base(spec.base, "a vLLM")
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
        residency = self.residency.get(base.name)
        if residency is None:
            spec, backend, placement = base.spec, base.backend, base.placement
            assert isinstance(spec, VllmSpec)
            assert isinstance(backend, VllmBackend)

            async def unload(name: str) -> None:
                await backend.unload_adapter(name, placement)

            residency = self.residency[base.name] = AdapterResidency(
                base.name,
                backend.kind,
                limit=spec.loaded_adapter_limit,
                unload=unload,
                retry_after=self.retry_after,
                wait_seconds=self.adapter_wait_seconds,
                metrics=self.metrics,
            )
        return residency

    async def load_restored(self, base: Route) -> None:
        """Load the adapters just attached to the restored vLLM base `base`, up to its limit:
        first those its server still holds (a container that kept running), then the oldest.
        What the server holds past the limit, or of adapters no longer deployed, is unloaded
        first, so it never holds more than the limit. An adapter that fails to load is listed
        as failed."""
        residency = self.residency.get(base.name)
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
                child = self.book.attached.pop(name)
                self.book.router.remove(name)
                await residency.detach(name)
                self.book.fail(name, child.spec, child.created, error)

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
        held = list(self.book.attached_to(spec.base))
        if len(held) >= base_spec.max_adapters:
            raise InvalidArgument(
                f"the base deployment '{spec.base}' already serves {len(held)} adapters, its "
                "max_adapters: delete one first, or deploy the base with a larger "
                "'max_adapters'",
                field="base",
            )
        placed = await self.placer.localize(spec)
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
        route = adapter_route(spec, base, placement, created, gate=residency.gate(spec.name))
        self.book.publish([route])
        self.book.attached[spec.name] = AttachedAdapter(spec=spec, files=(), created=created)
        return route

    # --- adapters on an Ollama base: an Ollama model each --------------------------------------

    def _serving_ollama_base(self, spec: OllamaSpec) -> Route:
        """The route of `spec`'s base, once it is known to be an Ollama model adapters can be
        created from.

        Raises:
            InvalidArgument: naming `base`, when it is no deployment, not serving, or not an
                Ollama deployment of a generation model's GGUF.
        """
        assert spec.base is not None
        route = self.book.running_base(spec.base, "an Ollama")
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
        placed = await self.placer.localize(spec)
        backend = base.backend
        assert isinstance(backend, OllamaBackend)
        placement = await backend.attach_adapter(spec.name, placed, base.placement)
        try:
            if commit is not None:
                await commit()
        except BaseException:
            await backend.release(spec.name, spec, placement)
            raise
        route = adapter_route(spec, base, placement, created)
        self.book.publish([route])
        self.book.attached[spec.name] = AttachedAdapter(spec=spec, files=(), created=created)
        return route
