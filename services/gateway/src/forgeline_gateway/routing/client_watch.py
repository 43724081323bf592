"""Noticing that a client went away, for the whole life of one inference request.

An HTTP server tells an ASGI app about a closed connection only through ``receive()``, so someone
has to be waiting on it while the gateway waits on a backend. One watcher task per request does
that, from the moment the request is admitted to the last byte of its answer (the wait for the
backend's status line and the stream alike), and cancels the task serving the request when the
client leaves. The serving task then unwinds through its ``finally`` blocks, which hang up on the
backend: that is how the backend learns to stop generating.

One task per request rather than one per phase: Starlette's streaming response and a
wait-for-either around the backend call each start their own, and with 64 streams in flight the
task churn was a visible share of the gateway's CPU (benchmarks/gateway_results.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Receive

__all__ = ["ClientDisconnectedError", "ClientWatch"]


class ClientDisconnectedError(Exception):
    """The client closed its connection before the answer was complete."""


class ClientWatch:
    """Cancels the task that created it when the client of `receive` disconnects.

    Create it in the task that serves the request, once the request body has been read (the
    watcher consumes ``receive``), and `stop` it when the answer is complete. Code that may be
    interrupted runs inside `guard`, which turns the watcher's cancellation into
    `ClientDisconnectedError` and lets any other cancellation (a server shutting down) through.
    """

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ClientWatch must be created inside a task")
        self._task = task
        self._receive = receive
        self._cancelled_by_us = False
        self._claimed = False
        self._stopped = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    @property
    def disconnected(self) -> bool:
        """The client went away while the request was being served."""
        return self._cancelled_by_us

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self._stopped:
            self._cancelled_by_us = True
            self._task.cancel()

    def stop(self) -> None:
        """The answer is complete (or abandoned): stop watching. Safe to call more than once."""
        if not self._stopped:
            self._stopped = True
            self._watcher.cancel()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block the client's departure may interrupt.

        Raises:
            ClientDisconnectedError: the client went away and the block was cancelled.
        """
        try:
            yield
        except asyncio.CancelledError:
            if self.claim():
                raise ClientDisconnectedError from None
            raise

    def claim(self) -> bool:
        """Whether a cancellation being handled now is this watcher's; if so it is taken back
        (`asyncio.Task.uncancel`), so the task carries on as uncancelled. Any other cancellation
        is left in place, to be re-raised."""
        if not self._cancelled_by_us or self._claimed or not self._task.cancelling():
            return False
        self._claimed = True
        # Another cancellation on top of ours (a shutdown) still stands: that one wins.
        return self._task.uncancel() == 0
