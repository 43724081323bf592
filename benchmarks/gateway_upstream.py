"""A fast OpenAI-style upstream for the gateway benchmark: every chat completion request gets the
same streamed completion (``--chunks`` chunks, ``--interval-ms`` apart), so whatever sits in front
of it is what the benchmark measures.

Plain asyncio HTTP/1.1 with keep-alive and chunked transfer: the least CPU per request a Python
server can spend, since it shares the machine's cores with the proxies and the load generator.

    python benchmarks/gateway_upstream.py --port 0   # prints {"port": N} once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

MODEL = "bench"


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def build_events(chunks: int) -> tuple[list[bytes], bytes]:
    """The stream's content events, and its end (finish, usage, [DONE])."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    events = [
        _event({**base, "choices": [{"index": 0, "delta": {"content": f" word{i}"},
                                     "finish_reason": None}]})
        for i in range(chunks)
    ]  # fmt: skip
    usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
    end = (
        _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        + _event({**base, "choices": [], "usage": usage})
        + b"data: [DONE]\n\n"
    )
    return events, end


class Upstream(asyncio.Protocol):
    """One keep-alive connection: reads requests, streams the fixed completion back."""

    events: list[bytes] = []
    end: bytes = b""
    interval = 0.0

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < head_end + 4 + length:
            return
        self.buffer = self.buffer[head_end + 4 + length :]
        path = head.split(" ", 2)[1]
        self.busy = True
        self.task = asyncio.ensure_future(self._answer(path))

    async def _answer(self, path: str) -> None:
        transport = self.transport
        assert transport is not None
        if path.endswith("/v1/models"):
            body = json.dumps(
                {
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "bench"}],
                }
            )
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body.encode()
            )  # fmt: skip
        else:
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for event in self.events:
                if self.interval:
                    await asyncio.sleep(self.interval)
                if transport.is_closing():
                    return  # the client went away: stop generating
                transport.write(_chunk(event))
            transport.write(_chunk(self.end) + b"0\r\n\r\n")
        self.busy = False
        if self.buffer:
            self._next()


async def serve(port: int, chunks: int, interval_ms: float) -> None:
    Upstream.events, Upstream.end = build_events(chunks)
    Upstream.interval = interval_ms / 1000
    server = await asyncio.get_running_loop().create_server(
        Upstream, "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound, "started": time.time()}), flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.port, args.chunks, args.interval_ms))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
