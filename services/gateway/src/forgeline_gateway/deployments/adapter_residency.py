"""Which adapter deployments of one base are loaded in its running server: at most a limit.

Many adapter deployments may be attached to one base deployment on a backend that loads and
unloads adapters at runtime (vLLM: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), but
only `limit` are kept loaded (the base's ``max_loaded_adapters``). Every request for an adapter
passes its gate (`AdapterResidency.gate`, a `RequestGate` its route carries):

* a loaded adapter is let through at once, with no lock and no await, and becomes the most
  recently used;
* an unloaded one is loaded first. To make room, the least recently used loaded adapter with no
  request in flight is unloaded; one with a request in flight (a stream still open, or a request
  waiting for it to load) is never unloaded, so no request sees its adapter vanish under it.
  Concurrent requests for the same unloaded adapter share one load;
* when every loaded adapter has requests in flight, the load waits up to `wait_seconds` for one
  to finish (most generations take seconds), then the request gets a 429 with Retry-After
  (`Overloaded`) rather than queueing without bound.

Loads and unloads of one base run one at a time (`_changes`): an adapter being unloaded is never
loaded again, nor counted as loaded, until its unload is over. A load is its own task, shielded
from the requests waiting for it: a client that leaves does not cancel a load others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from forgeline_gateway.errors import Overloaded
from forgeline_gateway.metrics import GatewayMetrics
from forgeline_kit.errors import ForgelineError, Unavailable

__all__ = ["AdapterGate", "AdapterResidency"]

log = logging.getLogger(__name__)

#: Loads an adapter into the base's server (on every instance), or raises why not.
Loader = Callable[[], Awaitable[None]]


class AdapterResidency:
    """The adapters of base deployment `base` loaded in its server, least recently used first.

    Args:
        base: the base deployment's name (for metrics and messages).
        backend: its backend kind (a metric label).
        limit: adapters kept loaded at once.
        unload: unloads the adapter of that name from the base's server; must not fail when
            the server does not hold it.
        retry_after: the Retry-After of a request refused because every slot is busy.
        wait_seconds: how long a load waits for a busy adapter to become idle.
        metrics: where loads, unloads and load times are counted.
    """

    def __init__(
        self,
        base: str,
        backend: str,
        *,
        limit: int,
        unload: Callable[[str], Awaitable[None]],
        retry_after: int,
        wait_seconds: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.base = base
        self.backend = backend
        self.limit = limit
        self.retry_after = retry_after
        self.wait_seconds = wait_seconds
        self.metrics = metrics
        self._unload = unload
        self._loaders: dict[str, Loader] = {}
        #: Loaded adapters, least recently used first.
        self._loaded: OrderedDict[str, None] = OrderedDict()
        #: Requests in flight per adapter, those waiting for it to load included.
        self._busy: dict[str, int] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._changes = asyncio.Lock()
        #: Set whenever an adapter's last request ends: a load waiting for room looks again.
        self._freed = asyncio.Event()

    @property
    def attached(self) -> tuple[str, ...]:
        """The adapters that may be loaded here, loaded or not."""
        return tuple(self._loaders)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The adapters loaded now, least recently used first."""
        return tuple(self._loaded)

    def in_flight(self, name: str) -> int:
        """Requests in flight for adapter `name` (waiting for its load included)."""
        return self._busy.get(name, 0)

    def attach(self, name: str, load: Loader) -> None:
        """Let adapter `name` be loaded here, by `load`; it is not loaded yet."""
        self._loaders[name] = load

    async def load(self, name: str, reason: str) -> None:
        """Load adapter `name` now unless it is loaded (making room as a request would).

        Raises:
            Overloaded: every loaded adapter stayed busy for `wait_seconds`.
            ForgelineError: the backend refused to load it (its message says why).
        """
        await self.acquire(name, reason)
        self.release(name)

    def adopt(self, name: str) -> bool:
        """Count adapter `name` as loaded without loading it (the server kept it loaded while
        the gateway restarted); False, and nothing changed, when no slot is free."""
        if name in self._loaded:
            return True
        if len(self._loaded) >= self.limit or name not in self._loaders:
            return False
        self._loaded[name] = None
        return True

    async def detach(self, name: str) -> None:
        """Unload adapter `name` and forget it. Requests in flight for it are not waited for:
        its route is removed first, so no new one comes."""
        async with self._changes:
            self._loaders.pop(name, None)
            if name not in self._loaded:
                return  # unloaded already (evicted, or its load failed and was undone)
            del self._loaded[name]
            await self._unload(name)
            self._count_unload(name, "detach")

    async def retire(self, name: str, within: float) -> None:
        """Forget adapter `name`, then unload it once its requests in flight have ended (or
        after `within` seconds): a deleted fine-tune's own streams finish whole. Its route must
        be gone already, so no new request comes; while it drains it still counts as loaded."""
        self._loaders.pop(name, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._busy.get(name) and (remaining := deadline - loop.time()) > 0:
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._freed.wait()
        if self._busy.get(name):
            log.warning(
                "adapter unloaded with requests in flight",
                extra={"model": name, "base": self.base, "drain_seconds": within},
            )
        await self.detach(name)

    async def unload_others(self, names: Iterable[str]) -> None:
        """Unload `names`, which this base's server holds but the gateway does not keep
        loaded (a gateway start: adapters past the limit, or no longer attached)."""
        async with self._changes:
            for name in names:
                if name in self._loaded:
                    continue
                await self._unload(name)
                self._count_unload(name, "restore")

    def gate(self, name: str) -> AdapterGate:
        """The gate of adapter `name`'s route."""
        return AdapterGate(self, name)

    async def close(self) -> None:
        """Cancel the loads in progress (the gateway is stopping)."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- requests -----------------------------------------------------------------------------

    async def acquire(self, name: str, reason: str) -> None:
        """Return once adapter `name` is loaded (loading it for `reason` if it is not), and
        keep it loaded until `release`. If cancelled, nothing is held.

        Raises:
            Overloaded: every loaded adapter stayed busy for `wait_seconds`.
            ForgelineError: the backend refused to load it.
        """
        # Counted before any await: an adapter a request waits for is never the one evicted.
        self._busy[name] = self._busy.get(name, 0) + 1
        try:
            while name not in self._loaded:
                task = self._loads.get(name)
                if task is None or task.done():  # a done one is only waiting for its callback
                    # The wait for a busy slot counts from the request's arrival, not from the
                    # end of the loads of other adapters it queued behind.
                    deadline = asyncio.get_running_loop().time() + self.wait_seconds
                    task = asyncio.create_task(
                        self._bring_in(name, reason, deadline), name=f"load adapter {name}"
                    )
                    self._loads[name] = task
                    task.add_done_callback(partial(self._load_done, name))
                await asyncio.shield(task)
        except BaseException:
            self.release(name)
            raise
        self._loaded.move_to_end(name)

    def release(self, name: str) -> None:
        """A request that acquired adapter `name` has ended."""
        left = self._busy.get(name, 0) - 1
        if left > 0:
            self._busy[name] = left
            return
        self._busy.pop(name, None)
        self._freed.set()

    def _load_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._loads.get(name) is task:
            del self._loads[name]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have left

    async def _bring_in(self, name: str, reason: str, deadline: float) -> None:
        async with self._changes:
            if name in self._loaded:
                return
            load = self._loaders.get(name)
            if load is None:
                raise Unavailable(f"The model '{name}' is being removed.")
            await self._make_room(name, deadline)
            started = time.monotonic()
            await load()
            self._loaded[name] = None
            seconds = time.monotonic() - started
            if self.metrics is not None:
                self.metrics.adapter_loads.labels(self.base, name, self.backend, reason).inc()
                self.metrics.adapter_load.labels(name, self.backend).observe(seconds)
            log.info(
                "adapter loaded",
                extra={"model": name, "base": self.base, "reason": reason, "seconds": seconds},
            )

    async def _make_room(self, name: str, deadline: float) -> None:
        """Unload idle adapters, least recently used first, until one more fits; wait for a
        busy one to become idle until `deadline` (the event loop's clock)."""
        loop = asyncio.get_running_loop()
        while len(self._loaded) >= self.limit:
            victim = next((n for n in self._loaded if n not in self._busy), None)
            if victim is not None:
                # Out of the loaded set before the await: no request is let through to it.
                del self._loaded[victim]
                await self._unload(victim)
                self._count_unload(victim, "lru")
                log.info(
                    "adapter unloaded, least recently used",
                    extra={"model": victim, "base": self.base, "needed_by": name},
                )
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Overloaded(
                    f"The model '{name}' is not loaded and the {self.limit} adapters loaded on "
                    f"its base all have requests in flight; retry after {self.retry_after} s.",
                    retry_after=self.retry_after,
                )
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._freed.wait()

    def _count_unload(self, name: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.adapter_unloads.labels(self.base, name, self.backend, reason).inc()


class AdapterGate:
    """The `RequestGate` of one adapter deployment's route: its adapter loaded, and kept
    loaded while the request runs."""

    def __init__(self, residency: AdapterResidency, name: str) -> None:
        self._residency = residency
        self._name = name

    async def enter(self) -> None:
        """Return once the adapter is loaded, counting the request until `leave`.

        Raises:
            Overloaded: every loaded adapter of the base stayed busy (429, Retry-After).
            Unavailable: the backend could not load the adapter (503).
        """
        try:
            await self._residency.acquire(self._name, "on_demand")
        except Overloaded:
            raise
        except ForgelineError as error:
            # The reason (paths, hosts) is for admins; the client learns it may retry.
            log.error(
                "adapter could not be loaded on demand",
                extra={"model": self._name, "base": self._residency.base, "error": error.message},
            )
            raise Unavailable(
                f"The model '{self._name}' could not be loaded on its base model; retry later."
            ) from None

    def leave(self) -> None:
        """The request has ended."""
        self._residency.release(self._name)
