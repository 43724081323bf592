"""The gateway's HTTP/1.1 transport on its own, against scripted servers: framing, reuse of
keep-alive connections, retry on a connection the server dropped, errors as httpx's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from forgeline_gateway.routing.transport import PooledTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _request_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PooledTransport(), timeout=5.0)


async def test_chunked_and_sized_bodies_over_one_reused_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")  # fmt: skip
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nsize")
        await _request_head(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up

    server, url = await _serve(handler)
    async with server, _client() as client:
        first = await client.post(f"{url}/a", content=b"{}")
        second = await client.get(f"{url}/b")
        third = await client.get(f"{url}/c")

    assert first.content == b"hello world"
    assert second.content == b"size"
    assert third.status_code == 204
    assert connections == 1


async def test_a_body_delimited_by_close_and_a_100_continue() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil the end")
        writer.close()

    server, url = await _serve(handler)
    async with server, _client() as client:
        response = await client.get(url)

    assert response.status_code == 200
    assert response.content == b"until the end"


async def test_a_pooled_connection_the_server_dropped_is_replaced() -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await _request_head(reader)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # an idle timeout on the server's side, without saying so

    server, url = await _serve(handler)
    async with server, _client() as client:
        assert (await client.get(url)).content == b"ok"
        await asyncio.sleep(0.05)  # let the close arrive
        assert (await client.post(url, content=b"again")).content == b"ok"

    assert answered == 2


async def test_closing_a_stream_early_hangs_up_on_the_server() -> None:
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for _ in range(1000):
                writer.write(b"6\r\nevent\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            hung_up.set()
            return
        if await reader.read() == b"":
            hung_up.set()

    server, url = await _serve(handler)
    async with server, _client() as client:
        async with client.stream("GET", url) as response:
            async for _ in response.aiter_raw():
                break  # the client wants no more
        await asyncio.wait_for(hung_up.wait(), 5)


async def test_failures_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        writer.close()

    slow, slow_url = await _serve(silent)
    bad, bad_url = await _serve(garbage)
    short, short_url = await _serve(cut)
    client = httpx.AsyncClient(transport=PooledTransport(), timeout=0.2)
    async with slow, bad, short, client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(slow_url)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(bad_url)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(short_url)
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9")  # nothing listens on the discard port


async def test_a_body_times_out_when_the_backend_stalls_not_while_it_trickles() -> None:
    events = 6

    async def trickle_then_stall(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        # Paced well inside the read timeout, for twice as long as the timeout in all.
        for _ in range(events):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)  # then the backend hangs

    server, url = await _serve(trickle_then_stall)
    client = httpx.AsyncClient(transport=PooledTransport(), timeout=0.3)
    received = bytearray()

    async def read_all(response: httpx.Response) -> None:
        async for data in response.aiter_raw():
            received.extend(data)

    async with server, client, client.stream("GET", url) as response:
        with pytest.raises(httpx.ReadTimeout):
            await read_all(response)
    assert received == b"x" * events


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        while size := int((await reader.readline()).strip(), 16):
            received.append((await reader.readexactly(size + 2))[:-2])
        await reader.readline()
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    server, url = await _serve(handler)
    async with server, _client() as client:
        response = await client.post(url, content=parts())

    assert response.status_code == 201
    assert b"".join(received) == b"one two three"
