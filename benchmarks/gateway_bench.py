"""Gateway benchmark, one command, side by side: direct calls, the Forgeline gateway and LiteLLM's
proxy, in front of the same fast upstream streaming a fixed completion, at several numbers of
concurrent streaming clients.

    .venv/bin/python benchmarks/gateway_bench.py --litellm /tmp/litellm-venv/bin/litellm

A TCP relay that copies bytes and parses nothing (`gateway_relay.py`) runs beside them: what it
adds is the price of one more process hop on this machine, the floor under any proxy's figures.

Reported per target and concurrency: requests/s, latency and time to first token (p50, p99), what
the proxy adds to both over direct calls, and the proxy's CPU seconds per request (and so its
requests/s per core). With ``--rounds N`` every target is measured N times, the targets taking
turns within each round, and each figure is the median over the rounds; what a proxy adds is the
median of its per-round differences from the direct calls of the same round. Single windows on a
shared machine vary by more than the differences being measured.

``--baseline-src DIR`` adds a second gateway run from another checkout's
``services/gateway/src`` (``git worktree add /tmp/base <commit>``): a change and what it
replaces, measured side by side in the same rounds.

Everything shares this machine's cores (the load generator, the upstream, the proxy), so CPU per
request is the fairest comparison. LiteLLM is optional: install it apart
(``python3.11 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gateway_load import LoadResult, run_load

HERE = Path(__file__).parent
START_DEADLINE_S = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    port: int
    path: str
    key: str | None
    pid: int | None  # the proxy's process (None for direct calls)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(c) for c in children)
    return total


def _wait_http(url: str, deadline_s: float = START_DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # poll interval; readiness is the endpoint answering
    raise RuntimeError(f"{url} did not answer within {deadline_s:.0f} s")


@contextmanager
def _process(
    command: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(  # noqa: S603 - argument lists built here
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _read_json_line(process: subprocess.Popen[str], key: str) -> dict[str, object]:
    """The first JSON line of the process's output that has `key`; the rest of its output is
    drained in the background from then on (a full pipe would stall the process)."""
    assert process.stdout is not None
    end = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < end:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{process.args} exited before reporting {key!r}")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            return record
    raise RuntimeError(f"{process.args} did not report {key!r}")


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if '"level": "ERROR"' in line or "Traceback" in line:
            print(f"[{Path(str(process.args[1])).name}] {line.rstrip()}", file=sys.stderr)


@contextmanager
def upstream(interval_ms: float) -> Iterator[int]:
    command = [sys.executable, str(HERE / "gateway_upstream.py"), "--interval-ms", str(interval_ms)]
    with _process(command) as process:
        yield int(str(_read_json_line(process, "port")["port"]))


@contextmanager
def relay(upstream_port: int) -> Iterator[Target]:
    """`gateway_relay.py`: bytes copied to the upstream, the floor of any proxy here."""
    script = HERE / "gateway_relay.py"
    command = [sys.executable, str(script), "--upstream-port", str(upstream_port)]
    with _process(command) as process:
        port = int(str(_read_json_line(process, "port")["port"]))
        yield Target("tcp relay", port, "/v1/chat/completions", None, process.pid)


@contextmanager
def gateway_process(
    workdir: Path, name: str, settings: dict[str, str], source: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """`forgeline-gateway` in a process of its own (as `forgeline up` runs it) with `settings`
    (``FORGELINE_GATEWAY_*`` variables) and an admin+inference key: the process, its HTTP port
    and the key. From this checkout or (`source`) from another one's gateway sources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_GATEWAY_")}
    if source is not None:
        # Ahead of the installed (editable) package, so these sources are the ones imported.
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    env |= {
        **_database_setting(workdir / f"{name}.sqlite3", source),
        "FORGELINE_GATEWAY_HTTP_PORT": "0",
        "FORGELINE_GATEWAY_METRICS_PORT": "0",
        "FORGELINE_GATEWAY_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    created = subprocess.run(
        [sys.executable, "-m", "forgeline_gateway", "keys", "create", "bench",
         "--scope", "admin", "--scope", "inference"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = json.loads(created.stdout)["key"]
    with _process([sys.executable, "-m", "forgeline_gateway"], env) as process:
        yield process, int(str(_read_json_line(process, "http_port")["http_port"])), key


def _database_setting(path: Path, source: Path | None) -> dict[str, str]:
    """The variable that puts the gateway's database at `path`: DATABASE_URL, or the file path
    DATABASE where `source` is a checkout from before that setting (which refuses the new name
    as unknown)."""
    settings = source / "forgeline_gateway" / "settings.py" if source is not None else None
    if settings is not None and "database_url" not in settings.read_text(encoding="utf-8"):
        return {"FORGELINE_GATEWAY_DATABASE": str(path)}
    return {"FORGELINE_GATEWAY_DATABASE_URL": f"sqlite:///{path}"}


@contextmanager
def gateway(
    upstream_port: int, workdir: Path, source: Path | None = None, name: str = "gateway"
) -> Iterator[Target]:
    """The gateway, from this checkout or (`source`) from another one's gateway sources."""
    # The benchmark drives up to 512 streams at one upstream that can take them all.
    settings = {"FORGELINE_GATEWAY_MAX_IN_FLIGHT_PER_INSTANCE": "4096"}
    with gateway_process(workdir, name, settings, source) as (process, port, key):
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/deployments",
            json={"name": "bench", "backend": "vllm", "base_model": "bench",
                  "urls": [f"http://127.0.0.1:{upstream_port}"]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30, trust_env=False,
        )  # fmt: skip
        response.raise_for_status()
        yield Target(name, port, "/v1/chat/completions", key, process.pid)


@contextmanager
def litellm(executable: Path, upstream_port: int, workdir: Path) -> Iterator[Target]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        "  master_key: sk-bench\n"
    )
    port = _free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_PROXY": "*"}
    command = [str(executable), "--config", str(config), "--host", "127.0.0.1",
               "--port", str(port), "--num_workers", "1"]  # fmt: skip
    with _process(command, env) as process:
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
        _wait_http(f"http://127.0.0.1:{port}/health/liveliness")
        yield Target("litellm", port, "/v1/chat/completions", "sk-bench", process.pid)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(target: Target, concurrency: int, warmup: float, window: float) -> dict[str, float]:
    before = _cpu_seconds(target.pid) if target.pid else 0.0
    load_before = time.process_time()
    started = time.monotonic()
    result: LoadResult = asyncio.run(
        run_load("127.0.0.1", target.port, target.path, "bench", target.key, concurrency,
                 warmup, window)
    )  # fmt: skip
    elapsed = time.monotonic() - started
    summary = result.summary()
    summary["concurrency"] = concurrency
    summary["load_cpu_s"] = time.process_time() - load_before
    if target.pid:
        cpu = _cpu_seconds(target.pid) - before
        total = max(result.total, 1)
        summary["proxy_cpu_ms_per_request"] = cpu / total * 1000
        summary["proxy_rps_per_core"] = total / cpu if cpu else float("inf")
        summary["proxy_cpu_share"] = cpu / elapsed
    return summary


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def _added(rounds: list[dict[str, float]], direct: list[dict[str, float]], key: str) -> float:
    """The median over rounds of what the target added to the direct calls of the same round."""
    return statistics.median(r[key] - d[key] for r, d in zip(rounds, direct, strict=True))


def _row(name: str, rounds: list[dict[str, float]], direct: list[dict[str, float]] | None) -> str:
    s = {key: _median(rounds, key) for key in rounds[0]}
    if direct is not None:
        added = (
            f"{_added(rounds, direct, 'latency_p50_ms'):+.2f} / "
            f"{_added(rounds, direct, 'latency_p99_ms'):+.2f} | "
            f"{_added(rounds, direct, 'ttft_p50_ms'):+.2f} / "
            f"{_added(rounds, direct, 'ttft_p99_ms'):+.2f}"
        )
    else:
        added = "- | -"
    cpu = s.get("proxy_cpu_ms_per_request")
    per_core = s.get("proxy_rps_per_core")
    errors = sum(int(r["errors"]) for r in rounds)
    return (
        f"| {name} | {int(s['concurrency'])} | {s['rps']:.0f} | {s['latency_p50_ms']:.2f} / "
        f"{s['latency_p99_ms']:.2f} | {s['ttft_p50_ms']:.2f} / {s['ttft_p99_ms']:.2f} | {added} | "
        f"{'-' if cpu is None else f'{cpu:.2f}'} | {'-' if per_core is None else f'{per_core:.0f}'}"
        f" | {errors} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", type=Path, help="the `litellm` executable (optional)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="pause between the upstream's chunks"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every target this many times, in turns"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run the gateway from this directory (another checkout's services/gateway/src)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream_port = stack.enter_context(upstream(args.interval_ms))
        starts: list[Callable[[], AbstractContextManager[Target]]] = [
            lambda: relay(upstream_port),
            lambda: gateway(upstream_port, workdir),
        ]
        if args.baseline_src:
            baseline = args.baseline_src.resolve()
            if not (baseline / "forgeline_gateway").is_dir():
                parser.error(f"--baseline-src {baseline} has no forgeline_gateway package")
            starts.append(lambda: gateway(upstream_port, workdir, baseline, "gateway (baseline)"))
        if args.litellm:
            starts.append(lambda: litellm(args.litellm, upstream_port, workdir))
        # Every proxy is up for the whole run (an idle one costs nothing), so rounds can take
        # turns between them.
        targets = [Target("direct", upstream_port, "/v1/chat/completions", None, None)]
        targets += [stack.enter_context(start()) for start in starts]
        for number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for target in targets:
                    summary = measure(target, concurrency, args.warmup, args.window)
                    by_concurrency = results.setdefault(target.name, {})
                    by_concurrency.setdefault(concurrency, []).append(summary)
            print(f"round {number}/{args.rounds} measured", file=sys.stderr)

    rounds = f"medians of {args.rounds} rounds" if args.rounds > 1 else "one round"
    print(
        f"\nUpstream: 16 chunks, {args.interval_ms:g} ms apart. Window {args.window:g} s after "
        f"{args.warmup:g} s warm-up, {rounds}; {os.cpu_count()} CPUs shared by everything.\n"
    )
    print("| target | streams | req/s | latency p50 / p99 ms | TTFT p50 / p99 ms | "
          "added latency p50 / p99 ms | added TTFT p50 / p99 ms | proxy CPU ms/req | "
          "proxy req/s per core | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, by_concurrency in results.items():
        for concurrency, summaries in by_concurrency.items():
            direct = results["direct"][concurrency] if name != "direct" else None
            print(_row(name, summaries, direct))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
