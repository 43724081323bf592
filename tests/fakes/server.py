"""Serving a fake's ASGI app on a loopback port from a thread of the test process."""

from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn
from starlette.types import ASGIApp

START_DEADLINE_S = 30.0


class ReadyServer(uvicorn.Server):
    """A uvicorn server that sets `ready` once it listens (or once it gave up starting)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class FakeServer:
    """`app` served on 127.0.0.1 until `stop`; `url` is its base URL."""

    def __init__(self, app: ASGIApp) -> None:
        self._server = ReadyServer(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
        )
        self._thread = threading.Thread(target=self._run, name="fake-backend", daemon=True)
        self.port = 0

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve())
        finally:
            self._server.ready.set()

    def start(self) -> FakeServer:
        self._thread.start()
        if not self._server.ready.wait(START_DEADLINE_S) or not self._server.started:
            raise RuntimeError("the fake backend did not start")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
