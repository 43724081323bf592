"""1, 4 and 8 fine-tunes of one base served as adapters on a shared llama.cpp base, against the
same number served merged (issue 21), through the real gateway; one command, prints the tables.

    .venv/bin/python benchmarks/adapter_serving.py [--fine-tunes 1 4 8]

The fine-tunes are LoRA adapters of the tiny model with random B matrices (`tests/gguf_adapters.py`,
the helper the gateway's tests use): each converted to an F32 GGUF adapter, and merged into the
model and converted to an F16 GGUF, the type of the base GGUF here. Side by side, for each N:

* adapters: the base deployment (its F16 GGUF) and N adapter deployments on it (``base``), one
  llama-server process loading the N adapters;
* merged: N deployments of the merged GGUFs, a process each.

Reported: llama-server processes, their resident memory (RSS, and PSS, which splits pages two
processes share), the GGUF files served (disk), the median time to the first streamed token, the
completion tokens per second with 1 stream and with 8 concurrent streams (requests spread over
the N fine-tunes), and how many fine-tunes answer the same through both (greedy, 12 tokens: with
random weights longer answers part at rounding differences; see
tests/gateway/test_adapter_serving_choice.py). Every deployment has the gateway's defaults
(context 2048, 4 slots).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the adapter helper and the gateway harness
from gateway.harness import Gateway, make_key  # noqa: E402
from gguf_adapters import GgufAdapter, hf_to_gguf, make_gguf_adapter  # noqa: E402

from forgeline_gateway.backends.llamacpp import LlamaCppBackend  # noqa: E402
from forgeline_gateway.security.keys import Scope  # noqa: E402
from forgeline_kit.llamacpp import locate  # noqa: E402
from forgeline_kit.tinymodel import DEFAULT_SEED, write_tiny_model  # noqa: E402

QUESTION = [{"role": "user", "content": "hello"}]
ANSWER_TOKENS = 12
#: Streamed requests timed for the first token per set, spread over its fine-tunes: enough that
#: the median of a 1-fine-tune set is not a handful of samples.
TTFT_SAMPLES = 40
#: Tokens asked for in the throughput runs, and requests per stream.
THROUGHPUT_TOKENS = 48
REQUESTS_PER_STREAM = 6
CONCURRENT_STREAMS = 8


@dataclass
class Measured:
    processes: int
    rss_mib: float
    pss_mib: float
    disk_mib: float
    ttft_ms: float
    tokens_per_s_1: float
    tokens_per_s_8: float
    answers: dict[str, str]


def _memory_kib(pid: int, field: str) -> int:
    """`field` (``Rss:``, ``Pss:``) of the process, in KiB, from /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _body(model: str, max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": QUESTION,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def _ask(http: httpx.Client, model: str, max_tokens: int = ANSWER_TOKENS) -> tuple[str, int]:
    """A greedy answer and its completion tokens."""
    response = http.post("/v1/chat/completions", json=_body(model, max_tokens))
    response.raise_for_status()
    body = response.json()
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]


def _first_token_s(http: httpx.Client, model: str) -> float:
    """Seconds from sending a streamed request to its first content delta."""
    started = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=_body(model, 8, stream=True)) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line.removeprefix("data: "))["choices"]
            if choices and choices[0]["delta"].get("content"):
                return time.perf_counter() - started
    raise RuntimeError(f"{model} streamed no content")


def _tokens_per_s(gateway: Gateway, key: str, models: list[str], streams: int) -> float:
    """Completion tokens per second of `streams` clients, each sending requests in turn over
    `models`."""

    def client_run(offset: int) -> int:
        with _client(gateway, key) as http:
            return sum(
                _ask(http, models[(offset + i) % len(models)], THROUGHPUT_TOKENS)[1]
                for i in range(REQUESTS_PER_STREAM)
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(client_run, range(streams)))
    return tokens / (time.perf_counter() - started)


def _client(gateway: Gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
        trust_env=False,
    )


def _measure(
    work: Path, specs: list[dict[str, Any]], asked: list[str], files: list[Path]
) -> Measured:
    database = work / f"gateway-{time.monotonic_ns()}.sqlite3"
    admin = make_key(database, Scope.ADMIN)
    key = make_key(database, Scope.INFERENCE)
    gateway = Gateway(database, {"model_dirs": [str(work)]})
    gateway.start()
    try:
        for spec in specs:
            response = httpx.post(
                f"{gateway.url}/v1/deployments",
                headers={"Authorization": f"Bearer {admin}"},
                json=spec,
                timeout=300,
                trust_env=False,
            )
            response.raise_for_status()
        manager = gateway.app.state.manager
        gateway.call(manager.settle())
        backend = manager.backends["llamacpp"]
        assert isinstance(backend, LlamaCppBackend)
        with _client(gateway, key) as http:
            answers = {model: _ask(http, model)[0] for model in asked}
            ttft = [_first_token_s(http, asked[i % len(asked)]) for i in range(TTFT_SAMPLES)]
        single = _tokens_per_s(gateway, key, asked, 1)
        concurrent = _tokens_per_s(gateway, key, asked, CONCURRENT_STREAMS)
        pids = [p.pid for p in backend.running_processes() if p.pid is not None]
        return Measured(
            processes=len(pids),
            rss_mib=sum(_memory_kib(pid, "Rss:") for pid in pids) / 1024,
            pss_mib=sum(_memory_kib(pid, "Pss:") for pid in pids) / 1024,
            disk_mib=sum(f.stat().st_size for f in files) / (1 << 20),
            ttft_ms=statistics.median(ttft) * 1000,
            tokens_per_s_1=single,
            tokens_per_s_8=concurrent,
            answers=answers,
        )
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--fine-tunes", type=int, nargs="+", default=[1, 4, 8], metavar="N")
    args = parser.parse_args()
    counts: list[int] = sorted(set(args.fine_tunes))
    toolchain = locate()
    results: list[tuple[int, Measured, Measured]] = []
    with tempfile.TemporaryDirectory(prefix="forgeline-adapter-bench-") as scratch:
        work = Path(scratch)
        model = write_tiny_model(work / "model", seed=DEFAULT_SEED)
        base = hf_to_gguf(toolchain, model.path, work / "tiny-f16.gguf")
        print(f"making {max(counts)} fine-tunes (GGUF adapters and merged GGUFs)...")
        tunes: list[GgufAdapter] = [
            make_gguf_adapter(model.path, work / "tunes", toolchain, seed=seed, merged=True)
            for seed in range(1, max(counts) + 1)
        ]
        base_spec = {"name": "tiny", "backend": "llamacpp", "gguf": str(base)}
        base_only = _measure(work, [base_spec], ["tiny"], [base])
        for n in counts:
            print(f"measuring {n} fine-tune(s), as adapters and merged...")
            chosen = tunes[:n]
            names = [f"ft:tiny:{t.seed}" for t in chosen]
            adapter_specs = [
                {"name": name, "backend": "llamacpp", "base": "tiny", "lora": [str(t.gguf)]}
                for name, t in zip(names, chosen, strict=True)
            ]
            adapters = _measure(
                work, [base_spec, *adapter_specs], names, [base, *(t.gguf for t in chosen)]
            )
            merged_files = [t.merged_gguf for t in chosen if t.merged_gguf is not None]
            merged = _measure(
                work,
                [
                    {"name": name, "backend": "llamacpp", "gguf": str(f)}
                    for name, f in zip(names, merged_files, strict=True)
                ],
                names,
                merged_files,
            )
            results.append((n, adapters, merged))
    _report(results, base_only)


def _report(results: list[tuple[int, Measured, Measured]], base_only: Measured) -> None:
    print()
    print(
        "| fine-tunes | served as | llama-server processes | RSS MiB | PSS MiB | GGUF on disk MiB "
        f"| TTFT p50 ms | tokens/s, 1 stream | tokens/s, {CONCURRENT_STREAMS} streams |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("-", "the base alone", base_only)]
    for n, adapters, merged in results:
        rows += [(str(n), "adapters on the base", adapters), (str(n), "merged", merged)]
    for n_text, label, m in rows:
        print(
            f"| {n_text} | {label} | {m.processes} | {m.rss_mib:.1f} | {m.pss_mib:.1f} | "
            f"{m.disk_mib:.2f} | {m.ttft_ms:.1f} | {m.tokens_per_s_1:.0f} | "
            f"{m.tokens_per_s_8:.0f} |"
        )
    print()
    print(
        "| fine-tunes | RSS, adapters vs the base alone | RSS, adapters vs merged | "
        "TTFT, adapters vs merged | tokens/s (8 streams), adapters vs merged | "
        "same greedy answer |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, adapters, merged in results:
        same = sum(adapters.answers[k] == merged.answers[k] for k in merged.answers)
        print(
            f"| {n} | {adapters.rss_mib / base_only.rss_mib:.2f}x | "
            f"{adapters.rss_mib / merged.rss_mib:.2f}x | "
            f"{adapters.ttft_ms / merged.ttft_ms:.2f}x | "
            f"{adapters.tokens_per_s_8 / merged.tokens_per_s_8:.2f}x | {same} of {n} |"
        )
    print()
    print(
        "Goals (issue 21): 8 fine-tunes within 1.3x the memory of one model; time to first "
        "token within 10% of the merged deployments."
    )


if __name__ == "__main__":
    main()
