"""Admission under overload (issue 21): answers/s at 1x, 4x, 16x and 64x a llama-server's slots
in concurrent streams, with the in-flight bound sized to the slots against the old fixed bound,
side by side in one run through the real gateway; one command, prints the table.

    .venv/bin/python benchmarks/admission.py [--rounds 3] [--window 8]

One gateway (its own process, as `forgeline up` runs it) serves the tiny model's F16 GGUF under
several deployments, each its own llama-server with 4 slots (the default `parallel`), differing
only in how many requests the gateway lets in flight on it:

* ``fixed 64``: the bound before this change (``max_in_flight`` 64): past the slots, requests
  wait inside llama-server;
* ``slots + 0``, ``slots + 4 (default)``, ``slots + 8``: the slots and that many more (the
  default deployment: no ``max_in_flight``, the gateway's ``queue_per_instance``).

Each client is a closed loop of streamed chat completions (16 tokens) on one keep-alive
connection, and does what the OpenAI SDK does with a 429: waits its ``Retry-After``, then asks
again. Reported per deployment and load, medians over the rounds (the deployments take turns in
each round): answers/s, their latency p50 and p99, and 429s/s with the median time to get one.
The goal: at 16x the slots, answers/s at least 80% of the best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gateway_bench import gateway_process  # noqa: E402
from gateway_load import request_bytes  # noqa: E402

from forgeline_kit.llamacpp import locate  # noqa: E402
from forgeline_kit.llamacpp.gguf_py import subprocess_env  # noqa: E402
from forgeline_kit.tinymodel import DEFAULT_SEED, write_tiny_model  # noqa: E402

SLOTS = 4
DEFAULT_QUEUE = 4
#: Deployment name → its `max_in_flight` (None: the gateway's slots + queue_per_instance).
CONFIGS: dict[str, int | None] = {
    "fixed 64": 64,
    "slots + 0": SLOTS,
    f"slots + {DEFAULT_QUEUE} (default)": None,
    "slots + 8": SLOTS + 8,
}


@dataclass
class Load:
    """What one window measured."""

    window_s: float
    answers: int = 0
    refused: int = 0
    errors: int = 0
    latency: list[float] = field(default_factory=list)
    refusal: list[float] = field(default_factory=list)


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes, int]:
    """One response: status, body, Retry-After (0 if absent)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    retry = 0
    length = -1
    for line in lower.split(b"\r\n"):
        if line.startswith(b"retry-after:"):
            retry = int(line.split(b":")[1])
        elif line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length >= 0:
        return status, await reader.readexactly(length), retry
    parts = []
    while size := int((await reader.readline()).strip().split(b";")[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    await reader.readline()
    return status, b"".join(parts), retry


async def _client(port: int, request: bytes, start: float, stop: float, load: Load) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (began := time.perf_counter()) < stop:
            writer.write(request)
            try:
                status, body, retry = await _read(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                load.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            ended = time.perf_counter()
            counted = began >= start and ended <= stop
            if status == 429:
                if counted:
                    load.refused += 1
                    load.refusal.append(ended - began)
                await asyncio.sleep(retry or 1)  # what the OpenAI SDK does with a 429
            elif status == 200 and body.rstrip().endswith(b"data: [DONE]"):
                if counted:
                    load.answers += 1
                    load.latency.append(ended - began)
            else:
                load.errors += 1
    finally:
        writer.close()


async def _run(port: int, key: str, model: str, streams: int, window_s: float) -> Load:
    request = request_bytes("127.0.0.1", port, "/v1/chat/completions", model, key)
    warmup_s = 2.0
    start = time.perf_counter() + warmup_s
    stop = start + window_s
    load = Load(window_s)
    clients = [
        asyncio.ensure_future(_client(port, request, start, stop, load)) for _ in range(streams)
    ]
    await asyncio.wait(clients, timeout=warmup_s + window_s + 60)
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return load


def _gguf(out: Path) -> Path:
    toolchain = locate()
    model = write_tiny_model(out.parent / "model", seed=DEFAULT_SEED)
    subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(toolchain.convert_hf_to_gguf), str(model.path),
         "--outfile", str(out), "--outtype", "f16"],
        env=subprocess_env(toolchain), check=True, capture_output=True,
    )  # fmt: skip
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forgeline-admission-") as scratch:
        work = Path(scratch)
        gguf = _gguf(work / "tiny-f16.gguf")
        settings = {
            "FORGELINE_GATEWAY_MODEL_DIRS": json.dumps([str(work)]),
            "FORGELINE_GATEWAY_QUEUE_PER_INSTANCE": str(DEFAULT_QUEUE),
        }
        with gateway_process(work, "gateway", settings) as (_, port, key):
            names = {}
            for n, (label, bound) in enumerate(CONFIGS.items()):
                names[label] = f"tiny-{n}"
                spec: dict[str, object] = {
                    "name": names[label],
                    "backend": "llamacpp",
                    "gguf": str(gguf),
                    "parallel": SLOTS,
                }
                if bound is not None:
                    spec["max_in_flight"] = bound
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/deployments",
                    json=spec,
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=120,
                    trust_env=False,
                ).raise_for_status()
            runs: dict[tuple[str, int], list[Load]] = {}
            for round_ in range(args.rounds):
                for multiple in args.multiples:
                    for label, name in names.items():
                        load = asyncio.run(_run(port, key, name, multiple * SLOTS, args.window))
                        runs.setdefault((label, multiple), []).append(load)
                        print(
                            f"round {round_ + 1}, {multiple}x slots, {label}: "
                            f"{load.answers / load.window_s:.1f} answers/s, "
                            f"{load.refused / load.window_s:.1f} 429s/s, {load.errors} errors",
                            file=sys.stderr,
                        )
    _report(runs, args.multiples)


def _report(runs: dict[tuple[str, int], list[Load]], multiples: list[int]) -> None:
    print(f"\nllama-server with {SLOTS} slots, tiny model, 16-token streamed answers; medians of "
          f"{len(next(iter(runs.values())))} rounds\n")  # fmt: skip
    print("| in flight | streams | answers/s | vs best | latency p50 / p99 ms | 429s/s | "
          "429 p50 ms | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    best = {
        label: max(_median([r.answers / r.window_s for r in runs[(label, m)]]) for m in multiples)
        for label in CONFIGS
    }
    for label in CONFIGS:
        for multiple in multiples:
            loads = runs[(label, multiple)]
            rate = _median([r.answers / r.window_s for r in loads])
            latency = [x for r in loads for x in r.latency]
            refusal = [x for r in loads for x in r.refusal]
            share = rate / best[label] if best[label] else 0.0
            print(
                f"| {label} | {multiple * SLOTS} ({multiple}x) | {rate:.1f} | "
                f"{share:.0%} | {_percentile(latency, 50) * 1000:.0f} / "
                f"{_percentile(latency, 99) * 1000:.0f} | "
                f"{_median([r.refused / r.window_s for r in loads]):.1f} | "
                f"{_median(refusal) * 1000:.1f} | {sum(r.errors for r in loads)} |"
            )


if __name__ == "__main__":
    main()
