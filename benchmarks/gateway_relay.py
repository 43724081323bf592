"""The floor of any proxy on this machine: a TCP relay that copies bytes between each client
connection and a connection of its own to the upstream, parsing nothing (uvloop, protocol
callbacks, no buffering beyond the kernel's).

What it adds over direct calls is the price of one more process hop (two more socket writes and
wake-ups per event) before any HTTP, JSON or routing work; `gateway_bench.py` measures it beside
the gateway so the gateway's own share of its added latency can be read off.

    .venv/bin/python benchmarks/gateway_relay.py --upstream-port 8000   # prints {"port": N}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import cast


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what arrives here is written to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.early: list[bytes] = []  # client bytes that came before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


class _Client(_Pipe):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            upstream_transport, upstream = await loop.create_connection(
                _Pipe, "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        upstream.peer = self.transport
        self.peer = upstream_transport
        for data in self.early:
            upstream_transport.write(data)
        self.early.clear()


async def serve(upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", 0, backlog=4096)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream_port))


if __name__ == "__main__":
    main()
