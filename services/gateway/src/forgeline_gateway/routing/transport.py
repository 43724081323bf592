"""The shared HTTP client's transport: HTTP/1.1 keep-alive connections to backends, pooled per
origin, with constant work per request.

httpx's default transport (httpcore's pool) re-examines every pooled connection, probing each
socket, whenever a request starts or ends: with 64 streams in flight that quadratic work made the
gateway spend 16 ms of CPU per request and serve 41 requests/s (see benchmarks/gateway_bench.py).
Backends here are a few origins each holding many concurrent streams, so this transport keeps a
LIFO stack of idle connections per origin instead: take one, use it, put it back.

It plugs into the one shared `httpx.AsyncClient` (requests, timeouts, streaming responses and
exceptions are httpx's), and it keeps the property cancellation relies on: a response closed
before its end closes its connection, which the backend takes as a cancelled request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

import httpx

__all__ = ["PooledTransport"]

Origin = tuple[str, str, int]

_HEAD_LIMIT = 64 * 1024  # the longest response head accepted
_READ_SIZE = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


def _deadline(seconds: float | None) -> AbstractAsyncContextManager[object]:
    return asyncio.timeout(seconds) if seconds is not None else nullcontext()


@dataclass(eq=False)
class _Connection:
    origin: Origin
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    requests: int = 0

    @property
    def usable(self) -> bool:
        # A backend that closed an idle connection has left EOF (or nothing) behind.
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _ReadDeadline:
    """A body's read timeout: a read that waits `seconds` for bytes is cancelled (and raises
    `TimeoutError`). One timer serves every read of the body: each read only notes when it
    started, and the timer, when it fires, re-arms itself for the read in progress if that one
    has not waited long enough. An ``asyncio.timeout`` per read, which schedules and cancels a
    timer each time, was 5% of the gateway's CPU with 64 streams in flight."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    async def read(self, reader: asyncio.StreamReader, size: int) -> bytes:
        if self.seconds is None:
            return await reader.read(size)
        task = self._task = asyncio.current_task()
        assert task is not None
        now = self._loop.time()
        self._waiting_since = now
        if self._timer is None:
            self._timer = self._loop.call_at(now + self.seconds, self._check)
        try:
            return await reader.read(size)
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() == 0:  # ours alone: any other cancellation goes on
                    raise TimeoutError from None
            raise
        finally:
            self._waiting_since = None

    def _check(self) -> None:
        self._timer = None
        since = self._waiting_since
        if since is None or self._task is None or self.seconds is None:
            return  # no read in progress; the next one arms the timer again
        if self._loop.time() - since >= self.seconds:
            self._expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(since + self.seconds, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(eq=False)
class _ResponseBody(httpx.AsyncByteStream):
    """A response body read off its connection as it arrives."""

    transport: PooledTransport
    connection: _Connection
    request: httpx.Request
    read_timeout: float | None
    chunked: bool
    length: int | None  # None with chunked=False: delimited by the connection's close
    keep_alive: bool
    _done: bool = field(default=False)
    _closed: bool = field(default=False)
    _deadline: _ReadDeadline = field(init=False)

    def __post_init__(self) -> None:
        self._deadline = _ReadDeadline(self.read_timeout)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self.chunked:
                async for data in self._chunked():
                    yield data
                self._done = True
                return
            else:
                remaining = self.length
                while remaining is None or remaining > 0:
                    data = await self._read(_READ_SIZE if remaining is None else remaining)
                    if not data:
                        if remaining is None:
                            break  # delimited by the close
                        raise httpx.RemoteProtocolError(
                            "the backend closed the connection before the end of the body",
                            request=self.request,
                        )
                    if remaining is not None:
                        remaining -= len(data)
                    yield data
            self._done = True
        except TimeoutError:
            raise httpx.ReadTimeout(
                "the backend sent nothing in time", request=self.request
            ) from None
        except ValueError:
            raise httpx.RemoteProtocolError(
                "the backend sent a malformed chunked body", request=self.request
            ) from None
        except OSError as error:
            raise httpx.ReadError(str(error) or repr(error), request=self.request) from None

    async def _read(self, size: int) -> bytes:
        return await self._deadline.read(self.connection.reader, min(size, _READ_SIZE))

    async def _chunked(self) -> AsyncIterator[bytes]:
        """The payload of a chunked body, yielded as it arrives: whatever is readable at once
        (several chunks, or part of one) comes out together, so a burst of small server-sent
        events costs one read and one write rather than one of each per event."""
        buffer = bytearray()
        remaining = 0  # payload bytes left in the current chunk
        crlf = False  # the CRLF that ends a chunk's payload is next
        while True:
            out = bytearray()
            while True:
                if remaining:
                    take = min(remaining, len(buffer))
                    if not take:
                        break
                    out += buffer[:take]
                    del buffer[:take]
                    remaining -= take
                    crlf = remaining == 0
                elif crlf:
                    if len(buffer) < 2:
                        break
                    del buffer[:2]
                    crlf = False
                else:
                    end = buffer.find(b"\r\n")
                    if end < 0:
                        break
                    size = int(bytes(buffer[:end]).split(b";", 1)[0].strip() or b"x", 16)
                    if size == 0:
                        if out:
                            yield bytes(out)
                        await self._trailer(buffer, end + 2)
                        return
                    del buffer[: end + 2]
                    remaining = size
            if out:
                yield bytes(out)
            data = await self._read(_READ_SIZE)
            if not data:
                raise httpx.RemoteProtocolError(
                    "the backend closed the connection mid-body", request=self.request
                )
            buffer += data

    async def _trailer(self, buffer: bytearray, start: int) -> None:
        # After the last chunk: an empty line, or trailer fields then one (no backend sends any).
        while True:
            rest = buffer[start:]
            if rest.startswith(b"\r\n") or b"\r\n\r\n" in rest:
                return
            data = await self._read(_READ_SIZE)
            if not data:
                raise httpx.RemoteProtocolError(
                    "the backend closed the connection mid-body", request=self.request
                )
            buffer += data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._deadline.close()
        if self._done and self.keep_alive:
            self.transport._release(self.connection)
        else:
            # Unread or unreadable: the only way to stop the backend is to hang up.
            self.connection.close()


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to backends over pooled keep-alive connections (see the module docstring).

    Args:
        max_idle_per_origin: idle connections kept per backend; more are closed when released.
        idle_seconds: an idle connection older than this is closed rather than reused.
    """

    def __init__(self, *, max_idle_per_origin: int = 512, idle_seconds: float = 30.0) -> None:
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_seconds = idle_seconds
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        head = self._head(request)
        # A body given as bytes can be sent again on a fresh connection if a pooled one turns
        # out to be dead; a streamed body cannot.
        replayable = isinstance(request.stream, httpx.ByteStream)
        while True:
            connection, reused = await self._acquire(origin, timeouts.get("connect"), request)
            try:
                await self._send(connection, head, request, timeouts.get("write"))
                response = await self._read_head(connection, request, timeouts.get("read"))
            except _StaleConnection:
                connection.close()
                if reused and replayable:
                    continue
                raise httpx.RemoteProtocolError(
                    "the backend closed the connection without answering", request=request
                ) from None
            except BaseException:
                connection.close()
                raise
            return response

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # --- connections ----------------------------------------------------------------------

    async def _acquire(
        self, origin: Origin, connect_timeout: float | None, request: httpx.Request
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < self.idle_seconds:
                return connection, True
            connection.close()
        scheme, host, port = origin
        try:
            async with _deadline(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_context() if scheme == "https" else None,
                    limit=_HEAD_LIMIT,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from None
        except OSError as error:
            raise httpx.ConnectError(str(error) or repr(error), request=request) from None
        return _Connection(origin, reader, writer), False

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if not connection.usable or len(idle) >= self.max_idle_per_origin:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    # --- one exchange ---------------------------------------------------------------------

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        lines = [request.method.encode() + b" " + request.url.raw_path + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in request.headers.raw]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @staticmethod
    async def _send(
        connection: _Connection, head: bytes, request: httpx.Request, seconds: float | None
    ) -> None:
        writer = connection.writer
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        try:
            async with _deadline(seconds):
                if isinstance(request.stream, httpx.ByteStream):
                    writer.write(head + b"".join([part async for part in request.stream]))
                else:
                    writer.write(head)
                    async for part in request.stream:  # type: ignore[union-attr]
                        if chunked:
                            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                        else:
                            writer.write(part)
                        await writer.drain()
                    if chunked:
                        writer.write(b"0\r\n\r\n")
                await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending to the backend timed out", request=request) from None
        except OSError as error:
            if connection.requests:
                raise _StaleConnection from None  # a pooled connection the backend closed
            raise httpx.WriteError(str(error) or repr(error), request=request) from None
        connection.requests += 1

    async def _read_head(
        self, connection: _Connection, request: httpx.Request, seconds: float | None
    ) -> httpx.Response:
        reader = connection.reader
        try:
            async with _deadline(seconds):
                while True:
                    try:
                        raw = await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError as error:
                        if not error.partial:
                            raise _StaleConnection from None  # closed without a word
                        raise
                    status, reason, version, headers = _parse_head(raw, request)
                    if status >= 200 or status == 101:
                        break  # 1xx (100 Continue, 103 Early Hints) precede the answer
        except TimeoutError:
            raise httpx.ReadTimeout("the backend did not answer in time", request=request) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise httpx.RemoteProtocolError(
                "the backend sent an incomplete response head", request=request
            ) from None
        except ConnectionResetError:
            raise _StaleConnection from None
        except OSError as error:
            raise httpx.ReadError(str(error) or repr(error), request=request) from None

        connection_header = _header(headers, b"connection").lower()
        keep_alive = version == b"HTTP/1.1" and b"close" not in connection_header
        chunked = b"chunked" in _header(headers, b"transfer-encoding").lower()
        length_text = _header(headers, b"content-length")
        length: int | None = int(length_text) if length_text.strip().isdigit() else None
        if request.method == "HEAD" or status in _NO_BODY_STATUSES:
            chunked, length = False, 0
        if not chunked and length is None:
            keep_alive = False  # the body ends when the backend closes the connection
        body = _ResponseBody(
            transport=self,
            connection=connection,
            request=request,
            read_timeout=seconds,
            chunked=chunked,
            length=length,
            keep_alive=keep_alive,
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=body,
            request=request,
            extensions={"http_version": version, "reason_phrase": reason},
        )


class _StaleConnection(Exception):  # noqa: N818 (internal signal, never raised to callers)
    """A pooled connection turned out closed before the backend answered anything."""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return b", ".join(value for key, value in headers if key.lower() == name)


def _parse_head(
    raw: bytes, request: httpx.Request
) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = raw[:-4].split(b"\r\n")
    try:
        version, status_text, *rest = lines[0].split(b" ", 2)
        status = int(status_text)
    except ValueError:
        raise httpx.RemoteProtocolError(
            f"the backend sent a malformed status line {lines[0][:80]!r}", request=request
        ) from None
    if not version.startswith(b"HTTP/1."):
        raise httpx.RemoteProtocolError(
            f"the backend does not speak HTTP/1.x ({version[:20]!r})", request=request
        )
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(
                f"the backend sent a malformed header {line[:80]!r}", request=request
            )
        headers.append((name.strip(), value.strip()))
    return status, rest[0] if rest else b"", version, headers
