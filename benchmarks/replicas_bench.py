"""Gateway state on SQLite against PostgreSQL, and 1 gateway against 3 replicas, side by side:
API write throughput and what the gateway adds to a streamed chat completion.

    .venv/bin/python benchmarks/replicas_bench.py [--rounds 3] [--window 5]

Each configuration runs real `forgeline-gateway` processes (and one registry, for files) on one
database: a SQLite file, or a database on a PostgreSQL server started here from Debian's
`postgresql` package (as the tests start theirs). Measured per configuration, in turns within each
round, medians over the rounds:

- writes: concurrent clients creating files (`POST /v1/files`, a one-record JSONL, stored in the
  registry) and API keys (`POST /v1/keys`), spread round-robin over the replicas: created per
  second. Fine-tuning jobs are not in it: creating one asks the trainer to validate the job and
  then trains, which would measure the trainer.
- chat: one streaming client per replica through the gateway to a fast upstream (a vLLM
  deployment on `gateway_upstream.py`), keys cached: p50 latency, and what the gateway adds to
  direct calls of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from gateway_bench import (  # noqa: E402
    Target,
    _process,
    _read_json_line,
    gateway_process,
    measure,
    upstream,
)
from postgres_server import running_postgres  # noqa: E402

WRITERS = 16
CHAT = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'  # noqa: E501


@dataclass
class Replicas:
    ports: list[int]
    key: str
    pids: list[int]


@contextmanager
def registry(workdir: Path) -> Iterator[str]:
    env = {
        "FORGELINE_REGISTRY_STORAGE": "fs",
        "FORGELINE_REGISTRY_FS_ROOT": str(workdir / "registry"),
        "FORGELINE_REGISTRY_GRPC_PORT": "0",
        "FORGELINE_REGISTRY_METRICS_PORT": "0",
        "FORGELINE_REGISTRY_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }

    with _process([sys.executable, "-m", "forgeline_registry"], os.environ | env) as process:
        yield f"127.0.0.1:{_read_json_line(process, 'grpc_port')['grpc_port']}"


@contextmanager
def replicas(
    count: int, database_url: str, registry_target: str, upstream_port: int, workdir: Path
) -> Iterator[Replicas]:
    """`count` gateways on `database_url`; the first creates the deployment the others restore."""
    with ExitStack() as stack:
        ports, pids, key = [], [], ""
        for n in range(count):
            settings = {
                "FORGELINE_GATEWAY_DATABASE_URL": database_url,
                "FORGELINE_GATEWAY_MODEL_CACHE": str(workdir / f"models-{n}"),
                "FORGELINE_GATEWAY_REGISTRY_TARGET": registry_target,
                "FORGELINE_GATEWAY_REGISTRY_LOCAL_FILES": "true",
                "FORGELINE_GATEWAY_MAX_IN_FLIGHT_PER_INSTANCE": "4096",
            }
            process, port, made = stack.enter_context(
                gateway_process(workdir, f"gateway-{n}", settings)
            )
            key = key or made
            if n == 0:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/deployments",
                    json={"name": "bench", "backend": "vllm", "base_model": "bench",
                          "urls": [f"http://127.0.0.1:{upstream_port}"]},
                    headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False,
                )  # fmt: skip
                response.raise_for_status()
            ports.append(port)
            pids.append(process.pid)
        yield Replicas(ports, key, pids)


async def _writes(group: Replicas, path: str, window: float) -> float:
    """Created per second by `WRITERS` clients posting to `path` over the replicas."""
    headers = {"Authorization": f"Bearer {group.key}"}
    created = 0
    stop_at = time.monotonic() + window

    async def writer(n: int, http: httpx.AsyncClient) -> None:
        nonlocal created
        port = group.ports[n % len(group.ports)]
        url = f"http://127.0.0.1:{port}{path}"
        while time.monotonic() < stop_at:
            if path == "/v1/files":
                response = await http.post(
                    url, headers=headers, data={"purpose": "fine-tune"},
                    files={"file": ("chat.jsonl", CHAT, "application/jsonl")},
                )  # fmt: skip
            else:
                response = await http.post(
                    url, headers=headers, json={"name": f"w{n}", "scopes": ["inference"]}
                )
            response.raise_for_status()
            created += 1

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        await asyncio.gather(*(writer(n, http) for n in range(WRITERS)))
    return created / (time.monotonic() - started)


def _chat(group: Replicas, warmup: float, window: float) -> float:
    """Median over the replicas of the p50 latency of one streaming client each, run one after
    the other (each replica's own figure, not a load on the database)."""
    figures = []
    for port, pid in zip(group.ports, group.pids, strict=True):
        target = Target("gateway", port, "/v1/chat/completions", group.key, pid)
        figures.append(measure(target, 1, warmup, window)["latency_p50_ms"])
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--interval-ms", type=float, default=1.0, help="upstream token interval")
    args = parser.parse_args()

    configurations = [("sqlite", 1), ("postgresql", 1), ("sqlite", 3), ("postgresql", 3)]
    results: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in configurations}
    direct: list[float] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="replicas-bench-")))
        server = stack.enter_context(running_postgres())
        upstream_port = stack.enter_context(upstream(args.interval_ms))
        registry_target = stack.enter_context(registry(workdir))
        direct_target = Target("direct", upstream_port, "/v1/chat/completions", None, None)
        for round_number in range(args.rounds):
            direct.append(measure(direct_target, 1, args.warmup, args.window)["latency_p50_ms"])
            for database, count in configurations:
                where = workdir / f"r{round_number}-{database}-{count}"
                where.mkdir()
                url = (
                    server.create_database()
                    if database == "postgresql"
                    else f"sqlite:///{where / 'gateway.sqlite3'}"
                )
                with replicas(count, url, registry_target, upstream_port, where) as group:
                    results[(database, count)].append(
                        {
                            "files_per_s": asyncio.run(_writes(group, "/v1/files", args.window)),
                            "keys_per_s": asyncio.run(_writes(group, "/v1/keys", args.window)),
                            "chat_p50_ms": _chat(group, args.warmup, args.window),
                        }
                    )
                print(
                    f"round {round_number + 1}: {database} x{count}: "
                    f"{json.dumps(results[(database, count)][-1])}",
                    file=sys.stderr,
                )

    print(f"\n{args.rounds} rounds, {WRITERS} concurrent writers, medians over the rounds\n")
    print("| database | gateways | files created/s | keys created/s | chat p50 ms | "
          "added to direct (p50 ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for database, count in configurations:
        rounds = results[(database, count)]
        added = statistics.median(r["chat_p50_ms"] - d for r, d in zip(rounds, direct, strict=True))
        print(
            f"| {database} | {count} | {statistics.median(r['files_per_s'] for r in rounds):.1f} | "
            f"{statistics.median(r['keys_per_s'] for r in rounds):.1f} | "
            f"{statistics.median(r['chat_p50_ms'] for r in rounds):.2f} | {added:+.2f} |"
        )
    print(f"\ndirect calls to the upstream: p50 {statistics.median(direct):.2f} ms")


if __name__ == "__main__":
    main()
