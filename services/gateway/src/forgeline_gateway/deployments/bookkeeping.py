"""What the gateway knows of its deployments besides their routes: `DeploymentBook`.

The book holds the routing table with the rest of the deployment manager's bookkeeping: the
deployments that could not be restored, each placed deployment's localized spec, the adapter
deployments attached to bases, the names being changed, and one lock per base. The manager and
each of its collaborators (placing, restore, adapters on a shared llama.cpp base, adapters
attached at runtime) share the one book, so an adapter attached by one is seen by all of them at
once. Also here: `DeploymentState`, a deployment as the admin API shows it, and
`AttachedAdapter`, an adapter deployment placed on its base.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forgeline_gateway.deployments.spec import DeploymentSpec
from forgeline_gateway.routing.router import Route, Router
from forgeline_kit.errors import ForgelineError, InvalidArgument

__all__ = ["AttachedAdapter", "DeploymentBook", "DeploymentState"]

log = logging.getLogger(__name__)


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
class AttachedAdapter:
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


class DeploymentBook:
    """The deployments the gateway serves or failed to restore, and what it keeps of each."""

    def __init__(self, router: Router) -> None:
        self.router = router
        #: Stored deployments that could not be placed again, with why.
        self.failed: dict[str, DeploymentState] = {}
        #: Each placed deployment's spec with its files local: a base is restarted from it.
        self.placed: dict[str, Any] = {}
        #: Adapter deployments placed on their bases, by name.
        self.attached: dict[str, AttachedAdapter] = {}
        #: Deployments being created or deleted, by name.
        self.busy: set[str] = set()
        self._base_locks: dict[str, asyncio.Lock] = {}

    def exists(self, name: str) -> bool:
        try:
            self.router.get(name)
        except ForgelineError:
            return name in self.failed
        return True

    def base_lock(self, base: str) -> asyncio.Lock:
        return self._base_locks.setdefault(base, asyncio.Lock())

    def attached_to(self, base: str) -> dict[str, AttachedAdapter]:
        """The adapter deployments placed on `base`, by name."""
        return {n: a for n, a in self.attached.items() if a.base == base}

    def adapters_of(self, base: str) -> list[str]:
        """The adapter deployments, placed or failed, whose base is `base`."""
        names = list(self.attached_to(base))
        names += [n for n, s in self.failed.items() if getattr(s.spec, "base", None) == base]
        return sorted(names)

    def publish(self, routes: Sequence[Route]) -> None:
        for route in routes:
            self.failed.pop(route.name, None)
            self.router.clear_unavailable(route.name)
            self.router.add(route)

    def fail(self, name: str, spec: Any, created: int, error: Exception) -> None:
        """List the stored deployment `name` as failed to restore, for `error`."""
        message = error.message if isinstance(error, ForgelineError) else repr(error)
        log.error("deployment could not be restored", extra={"model": name, "error": message})
        self.failed[name] = DeploymentState(
            spec=spec, created=created, ready=False, instances=0, error=message
        )
        self.router.mark_unavailable(name, message)

    def running_base(self, base: str, kind: str) -> Route:
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
                if base in self.failed
                else "does not exist"
            )
            raise InvalidArgument(
                f"the base deployment '{base}' {state}: adapters are served on {kind} "
                "deployment that is serving",
                field="base",
            ) from None
