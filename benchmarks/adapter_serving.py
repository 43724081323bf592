"""N fine-tunes of one base served as adapters on a shared llama.cpp base, against the same N served
merged (issue 21), through the real gateway; one command, prints a table.

    .venv/bin/python benchmarks/adapter_serving.py [--fine-tunes 3]

The fine-tunes are LoRA adapters of the tiny model with random B matrices (`tests/gguf_adapters.py`,
the helper the gateway's tests use): each converted to an F32 GGUF adapter, and merged into the
model and converted to an F16 GGUF, the type of the base GGUF here. Side by side:

* adapters: the base deployment (its F16 GGUF) and N adapter deployments on it (``base``), one
  llama-server process loading the N adapters;
* merged: N deployments of the merged GGUFs, a process each (a base served as well adds one).

Reported: llama-server processes, their resident memory (RSS, and PSS, which splits pages two
processes share), the GGUF files served (disk), the median latency of a short greedy answer, and
how many fine-tunes answer the same through both (greedy, 12 tokens: with random weights longer
answers part at rounding differences; see tests/gateway/test_adapter_serving_choice.py). Every
deployment has the gateway's defaults (context 2048, 4 slots).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the adapter helper and the gateway harness
from gateway.harness import Gateway, make_key  # noqa: E402
from gguf_adapters import GgufAdapter, make_gguf_adapter  # noqa: E402

from forgeline_gateway.backends.llamacpp import LlamaCppBackend  # noqa: E402
from forgeline_gateway.security.keys import Scope  # noqa: E402
from forgeline_kit.llamacpp import locate  # noqa: E402
from forgeline_kit.llamacpp.gguf_py import subprocess_env  # noqa: E402
from forgeline_kit.tinymodel import DEFAULT_SEED, write_tiny_model  # noqa: E402

QUESTION = [{"role": "user", "content": "hello"}]
REQUESTS = 20
ANSWER_TOKENS = 12


@dataclass
class Measured:
    processes: int
    rss_mib: float
    pss_mib: float
    disk_mib: float
    latency_ms: float
    answers: dict[str, str]


def _memory_kib(pid: int, field: str) -> int:
    """`field` (``Rss:``, ``Pss:``) of the process, in KiB, from /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _ask(gateway: Gateway, key: str, model: str) -> tuple[str, float]:
    started = time.perf_counter()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": QUESTION, "max_tokens": ANSWER_TOKENS, "temperature": 0},
        timeout=60,
        trust_env=False,
    )
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"], time.perf_counter() - started


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
        answers: dict[str, str] = {}
        latencies: list[float] = []
        for _ in range(REQUESTS // len(asked) + 1):
            for model in asked:
                answers[model], seconds = _ask(gateway, key, model)
                latencies.append(seconds)
        pids = [p.pid for p in backend.running_processes() if p.pid is not None]
        return Measured(
            processes=len(pids),
            rss_mib=sum(_memory_kib(pid, "Rss:") for pid in pids) / 1024,
            pss_mib=sum(_memory_kib(pid, "Pss:") for pid in pids) / 1024,
            disk_mib=sum(f.stat().st_size for f in files) / (1 << 20),
            latency_ms=statistics.median(latencies) * 1000,
            answers=answers,
        )
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fine-tunes", type=int, default=3, metavar="N")
    args = parser.parse_args()
    toolchain = locate()
    with tempfile.TemporaryDirectory(prefix="forgeline-adapter-bench-") as scratch:
        work = Path(scratch)
        model = write_tiny_model(work / "model", seed=DEFAULT_SEED)
        base = work / "tiny-f16.gguf"
        subprocess.run(  # noqa: S603 - a fixed argument list
            [
                sys.executable,
                str(toolchain.convert_hf_to_gguf),
                str(model.path),
                "--outfile",
                str(base),
                "--outtype",
                "f16",
            ],
            env=subprocess_env(toolchain),
            check=True,
            capture_output=True,
        )
        print(f"making {args.fine_tunes} fine-tunes (GGUF adapters and merged GGUFs)...")
        tunes: list[GgufAdapter] = [
            make_gguf_adapter(model.path, work / "tunes", toolchain, seed=seed, merged=True)
            for seed in range(1, args.fine_tunes + 1)
        ]
        names = [f"ft:tiny:{t.seed}" for t in tunes]
        base_spec = {"name": "tiny", "backend": "llamacpp", "gguf": str(base)}
        adapters = _measure(
            work,
            [base_spec]
            + [
                {"name": n, "backend": "llamacpp", "base": "tiny", "lora": [str(t.gguf)]}
                for n, t in zip(names, tunes, strict=True)
            ],
            names,
            [base, *(t.gguf for t in tunes)],
        )
        merged_files = [t.merged_gguf for t in tunes if t.merged_gguf is not None]
        merged = _measure(
            work,
            [
                {"name": n, "backend": "llamacpp", "gguf": str(f)}
                for n, f in zip(names, merged_files, strict=True)
            ],
            names,
            merged_files,
        )
        base_only = _measure(work, [base_spec], ["tiny"], [base])
    same = sum(adapters.answers[n] == merged.answers[n] for n in names)
    n = args.fine_tunes
    rows = [
        (f"{n} adapters on the base (and the base)", adapters),
        (f"{n} merged", merged),
        ("the base alone", base_only),
    ]
    print()
    print(f"| served | llama-server processes | RSS MiB | PSS MiB | GGUF on disk MiB | "
          f"median latency ms ({ANSWER_TOKENS} tokens) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, m in rows:
        print(
            f"| {label} | {m.processes} | {m.rss_mib:.1f} | {m.pss_mib:.1f} | "
            f"{m.disk_mib:.2f} | {m.latency_ms:.1f} |"
        )
    print()
    print(
        f"adapters vs merged: memory (RSS) {adapters.rss_mib / merged.rss_mib:.2f}x, disk "
        f"{adapters.disk_mib / merged.disk_mib:.2f}x; the same greedy answer through both: "
        f"{same} of {n} fine-tunes"
    )


if __name__ == "__main__":
    main()
