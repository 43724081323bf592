"""A lean streaming load generator for the gateway benchmark.

Each of N clients holds one keep-alive HTTP/1.1 connection and sends the same streaming chat
completion request in a closed loop, timing the first body chunk (time to first token) and the
end of the stream. Raw asyncio (on uvloop when present) keeps the generator's own CPU small: it
shares the machine's cores with the upstream and the proxy under test.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    """What one run measured; latencies in seconds."""

    concurrency: int
    window_s: float
    completed: int = 0
    total: int = 0  # every successful request, warm-up and stragglers included (for CPU/request)
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.completed / self.window_s if self.window_s else 0.0

    def percentile(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]

    def summary(self) -> dict[str, float]:
        return {
            "rps": self.rps,
            "completed": float(self.completed),
            "errors": float(self.errors),
            "latency_p50_ms": self.percentile(self.latency, 50) * 1000,
            "latency_p99_ms": self.percentile(self.latency, 99) * 1000,
            "ttft_p50_ms": self.percentile(self.ttft, 50) * 1000,
            "ttft_p99_ms": self.percentile(self.ttft, 99) * 1000,
        }


def request_bytes(host: str, port: int, path: str, model: str, key: str | None) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": 16,
            "stream": True,
        }
    ).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    if key:
        headers.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, started: float) -> tuple[float, bytes]:
    """Read one response; returns (time of the first body bytes, the body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    first = 0.0
    parts: list[bytes] = []
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            data = await reader.readexactly(size + 2)
            if not first:
                first = time.perf_counter()
            parts.append(data[:-2])
    else:
        length = 0
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        parts.append(await reader.readexactly(length))
        first = time.perf_counter()
    if status != 200:
        raise RuntimeError(f"status {status}: {b''.join(parts)[:300]!r}")
    return first - started, b"".join(parts)


async def _client(
    host: str,
    port: int,
    request: bytes,
    measure_from: float,
    stop_at: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(request)
            try:
                ttft, body = await _read_response(reader, started)
            except (RuntimeError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            ended = time.perf_counter()
            if not body.rstrip().endswith(b"data: [DONE]"):
                result.errors += 1
                continue
            result.total += 1
            if started >= measure_from and ended <= stop_at:
                result.completed += 1
                result.ttft.append(ttft)
                result.latency.append(ended - started)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    path: str,
    model: str,
    key: str | None,
    concurrency: int,
    warmup_s: float,
    window_s: float,
) -> LoadResult:
    """Run `concurrency` closed-loop clients; measure requests started and finished within the
    window after the warm-up."""
    request = request_bytes(host, port, path, model, key)
    now = time.perf_counter()
    measure_from = now + warmup_s
    stop_at = measure_from + window_s
    result = LoadResult(concurrency=concurrency, window_s=window_s)
    clients = []
    for _ in range(concurrency):
        clients.append(
            asyncio.ensure_future(_client(host, port, request, measure_from, stop_at, result))
        )
        await asyncio.sleep(0)  # open connections gradually rather than in one burst
    # Requests still running at the end are abandoned, bounded: a slow proxy may queue for long.
    done, pending = await asyncio.wait(clients, timeout=warmup_s + window_s + 120)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            result.errors += 1
    return result
