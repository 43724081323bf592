"""Placing every stored deployment again when the gateway starts: `DeploymentRestorer`.

Deployments survive a gateway restart this way. Each base deployment is placed with the adapter
deployments stored on it: a llama.cpp base once, its processes started with all of them loaded
(`SharedBaseAdapters.place_with_adapters`); a vLLM or Ollama base first, then each adapter
attached to it, oldest first (`RuntimeAdapters.attach`), and on vLLM up to its limit loaded. A
deployment that cannot be placed is listed as failed, with why, and so are the adapters on it
and those whose base no longer exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from forgeline_gateway.backends.llamacpp import LlamaCppBackend
from forgeline_gateway.backends.ollama import OllamaBackend
from forgeline_gateway.backends.vllm import VllmBackend
from forgeline_gateway.deployments.bookkeeping import AttachedAdapter, DeploymentBook
from forgeline_gateway.deployments.placing import Placer
from forgeline_gateway.deployments.runtime_adapters import RuntimeAdapters, RuntimeAdapterSpec
from forgeline_gateway.deployments.shared_base import SharedBaseAdapters
from forgeline_gateway.deployments.spec import DeploymentSpec, LlamaCppSpec
from forgeline_gateway.store import Store
from forgeline_kit.errors import FailedPrecondition, InvalidArgument

__all__ = ["DeploymentRestorer"]

_SPEC: TypeAdapter[DeploymentSpec] = TypeAdapter(DeploymentSpec)


class DeploymentRestorer:
    """Places the stored deployments again, each base with its adapter deployments."""

    def __init__(
        self,
        store: Store,
        book: DeploymentBook,
        placer: Placer,
        shared: SharedBaseAdapters,
        runtime: RuntimeAdapters,
    ) -> None:
        self.store = store
        self.book = book
        self.placer = placer
        self.shared = shared
        self.runtime = runtime

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
                await self._place(spec, created, attached)
            except Exception as error:
                self.book.fail(name, spec, created, error)
                for child, (child_spec, child_created) in attached.items():
                    self.book.fail(
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
                self.book.fail(
                    child,
                    child_spec,
                    child_created,
                    FailedPrecondition(f"its base deployment '{base}' does not exist"),
                )

    async def _place(
        self, spec: Any, created: int, attached: Mapping[str, tuple[DeploymentSpec, int]]
    ) -> None:
        """Place `spec` and publish it, with `attached`, the adapter deployments on it; one of
        those that cannot be placed is listed as failed, and the base serves without it."""
        backend = self.placer.backend(spec)
        if attached and isinstance(backend, VllmBackend | OllamaBackend):
            # vLLM and Ollama take adapters while running: the base first, then each of them
            # attached (oldest first); then, on vLLM, up to its limit loaded.
            route, _ = await self.placer.place(spec, created)
            for name, (child, child_created) in sorted(
                attached.items(), key=lambda item: (item[1][1], item[0])
            ):
                try:
                    if not isinstance(child, RuntimeAdapterSpec) or child.backend != spec.backend:
                        raise InvalidArgument(
                            f"its base '{spec.name}' is not a {child.backend} deployment",
                            field="base",
                        )
                    await self.runtime.attach(child, child_created, load=False)
                except Exception as error:
                    self.book.fail(name, child, child_created, error)
            if isinstance(backend, VllmBackend):
                await self.runtime.load_restored(route)
            return
        placed = await self.placer.localize(spec)
        # A base restored with its adapters: one start of its processes for all of them.
        adapters: dict[str, AttachedAdapter] = {}
        for name, (child, child_created) in attached.items():
            try:
                if not isinstance(backend, LlamaCppBackend) or not isinstance(child, LlamaCppSpec):
                    raise InvalidArgument(
                        f"its base '{spec.name}' is not a {child.backend} deployment that can "
                        "carry adapters",
                        field="base",
                    )
                adapters[name] = await self.shared.attachable(child, child_created)
            except Exception as error:
                self.book.fail(name, child, child_created, error)
        if not adapters or not isinstance(backend, LlamaCppBackend):
            await self.placer.place_localized(spec, backend, placed, created, publish=True)
            return
        await self.shared.place_with_adapters(spec, backend, placed, created, adapters)
