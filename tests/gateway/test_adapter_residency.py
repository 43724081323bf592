"""`AdapterResidency` on its own: the bookkeeping of which adapters a base keeps loaded, with
loads and unloads recorded instead of sent to vLLM (the gateway-level tests against the vLLM
contract fake are in test_vllm_adapters.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from forgeline_gateway.deployments.adapter_residency import AdapterResidency
from forgeline_gateway.errors import Overloaded
from forgeline_kit.errors import FailedPrecondition, Unavailable


class _Server:
    """What the residency loaded and unloaded, in order; loads may be held or refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.loaded: set[str] = set()
        self.release_loads = asyncio.Event()
        self.release_loads.set()
        self.refuse: set[str] = set()

    def loader(self, name: str) -> Callable[[], Awaitable[None]]:
        async def load() -> None:
            self.calls.append(("load", name))
            await self.release_loads.wait()
            if name in self.refuse:
                raise FailedPrecondition(f"vLLM refused {name}")
            self.loaded.add(name)

        return load

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.discard(name)


def _residency(server: _Server, limit: int = 2, wait: float = 0.2) -> AdapterResidency:
    residency = AdapterResidency(
        "base", "vllm", limit=limit, unload=server.unload, retry_after=2, wait_seconds=wait
    )
    for name in "abc":
        residency.attach(name, server.loader(name))
    return residency


async def test_a_client_that_leaves_does_not_cancel_a_load_others_wait_for() -> None:
    server = _Server()
    residency = _residency(server)
    server.release_loads.clear()
    first = asyncio.create_task(residency.gate("a").enter())
    second = asyncio.create_task(residency.gate("a").enter())
    await asyncio.sleep(0.05)

    first.cancel()
    server.release_loads.set()
    await second

    assert server.calls == [("load", "a")]
    assert residency.loaded == ("a",)
    assert residency.in_flight("a") == 1  # the one that stayed; the one that left holds nothing
    residency.gate("a").leave()
    assert residency.in_flight("a") == 0


async def test_a_failed_load_is_a_503_for_requests_and_the_next_request_tries_again() -> None:
    server = _Server()
    residency = _residency(server)
    server.refuse.add("a")

    with pytest.raises(Unavailable) as failed:
        await residency.gate("a").enter()

    assert "could not be loaded" in failed.value.message
    assert "vLLM refused" not in failed.value.message  # the reason is logged, not shown
    assert not residency.loaded
    assert residency.in_flight("a") == 0
    server.refuse.clear()
    await residency.gate("a").enter()
    assert residency.loaded == ("a",)


async def test_busy_adapters_are_waited_for_briefly_then_the_request_is_refused() -> None:
    server = _Server()
    residency = _residency(server, wait=0.2)
    await residency.gate("a").enter()
    await residency.gate("b").enter()

    with pytest.raises(Overloaded) as refused:
        await residency.gate("c").enter()
    assert refused.value.retry_after == 2
    assert residency.in_flight("c") == 0

    # One that frees while the request waits makes room for it.
    waiting = asyncio.create_task(residency.gate("c").enter())
    await asyncio.sleep(0.05)
    residency.gate("a").leave()
    await waiting
    assert residency.loaded == ("b", "c")
    assert server.calls[-2:] == [("unload", "a"), ("load", "c")]


async def test_detaching_unloads_only_what_is_loaded_and_a_detached_adapter_is_not_loaded() -> None:
    server = _Server()
    residency = _residency(server, limit=1)
    await residency.load("a", "attach")
    await residency.load("b", "attach")  # a unloaded to make room
    assert server.calls == [("load", "a"), ("unload", "a"), ("load", "b")]

    await residency.detach("a")
    await residency.detach("b")

    assert server.calls[-1] == ("unload", "b")
    assert server.calls.count(("unload", "a")) == 1
    assert residency.loaded == ()
    with pytest.raises(Unavailable):
        await residency.gate("b").enter()


async def test_adopting_what_the_server_holds_stops_at_the_limit() -> None:
    residency = _residency(_Server(), limit=2)

    assert residency.adopt("a")
    assert residency.adopt("b")
    assert not residency.adopt("c")
    assert residency.loaded == ("a", "b")


async def test_requests_for_two_unloaded_adapters_each_wait_no_longer_than_the_limit() -> None:
    residency = _residency(_Server(), limit=1, wait=0.3)
    await residency.gate("a").enter()
    loop = asyncio.get_running_loop()
    started = loop.time()

    refused = await asyncio.gather(
        residency.gate("b").enter(), residency.gate("c").enter(), return_exceptions=True
    )

    assert all(isinstance(error, Overloaded) for error in refused)
    assert loop.time() - started < 0.55  # not one wait after the other
    assert residency.loaded == ("a",)
