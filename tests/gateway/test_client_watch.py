"""`ClientWatch` on its own: a client's departure interrupts the request's work and nothing
else, and any other cancellation (a server shutting down) still goes through.

The end-to-end behaviour (a backend told to stop generating) is tested against llama-server in
test_routing.py and against the vLLM fake in test_vllm.py."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from forgeline_gateway.routing.client_watch import ClientDisconnectedError, ClientWatch


class _Client:
    """An ASGI ``receive`` whose disconnect the test triggers."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}


async def test_a_client_leaving_interrupts_the_guarded_work_and_only_that() -> None:
    client = _Client()
    work_started = asyncio.Event()

    async def serve() -> str:
        watch = ClientWatch(client.receive)
        try:
            with watch.guard():
                work_started.set()
                await asyncio.sleep(60)  # a backend that takes its time
        except ClientDisconnectedError:
            assert watch.disconnected
            # The task is not left cancelled: clean-up that awaits still runs.
            await asyncio.sleep(0)
            return "client left"
        finally:
            watch.stop()
        return "answered"

    task = asyncio.create_task(serve())
    await work_started.wait()
    client.leave()
    assert await asyncio.wait_for(task, 5) == "client left"


async def test_another_cancellation_is_not_taken_for_the_client() -> None:
    client = _Client()
    work_started = asyncio.Event()

    async def serve() -> None:
        watch = ClientWatch(client.receive)
        try:
            with watch.guard():
                work_started.set()
                await asyncio.sleep(60)
        finally:
            watch.stop()

    task = asyncio.create_task(serve())
    await work_started.wait()
    task.cancel()  # the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_leaving_after_the_answer_cancels_nothing() -> None:
    client = _Client()

    async def serve() -> str:
        watch = ClientWatch(client.receive)
        with watch.guard():
            await asyncio.sleep(0)
        watch.stop()
        client.leave()
        for _ in range(10):  # loop turns in which a watcher still running would act
            await asyncio.sleep(0)
        return "done"

    assert await asyncio.wait_for(serve(), 5) == "done"
