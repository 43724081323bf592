"""Evaluation speed (issue 22): samples per second of an eval run through the served backend
against ``llamafactory-cli`` predict (``do_predict`` with ``predict_with_generate``), on the same
model, data and answer length; one command, prints the table.

    .venv/bin/python benchmarks/eval_speed.py [--rows 64] [--max-tokens 32] [--rounds 3]

Both sides use the tiny model (the kit's, default seed) on this machine's CPU:

* served: its F16 GGUF deployed on llama-server through the real gateway (8 slots, the Evals API
  runner's concurrency), then an eval with one ``text_similarity`` (ROUGE-L) criterion and a run
  of type ``completions`` with the rows inline, greedy, at most ``--max-tokens`` tokens; timed from
  the run's creation to its completion (the deployment already serving, as the pipeline's is,
  and after one small warm-up run: the gateway loads the graders' libraries once, ~5 s);
* LLaMA-Factory: the same rows as an alpaca dataset, ``llamafactory-cli train`` with
  ``do_predict``, ``predict_with_generate``, ``do_sample: false``, ``max_new_tokens`` the same,
  ``per_device_eval_batch_size`` 8, ``template: chatml``. Reported twice: the whole command (what
  a user waits for: it loads torch and the model each time) and LLaMA-Factory's own
  ``predict_samples_per_second`` (generation only).

Rounds alternate the two sides; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the gateway harness and the GGUF helper
from gateway.harness import Gateway, make_key  # noqa: E402
from gguf_adapters import hf_to_gguf  # noqa: E402

from forgeline_gateway.security.keys import Scope  # noqa: E402
from forgeline_kit.llamacpp import locate  # noqa: E402
from forgeline_kit.tinymodel import LLAMAFACTORY_TEMPLATE, write_tiny_model  # noqa: E402

LLAMAFACTORY_CLI = Path(sys.executable).with_name("llamafactory-cli")
SLOTS = 8
TERMINAL = {"completed", "failed", "canceled"}


def _rows(count: int) -> list[tuple[str, str]]:
    return [
        (f"Question {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(count)
    ]


def _served_run(http: httpx.Client, rows: list[tuple[str, str]], max_tokens: int) -> float:
    """Seconds from creating the run to its completion."""
    evaluation = http.post(
        "/v1/evals",
        json={
            "name": "speed",
            "data_source_config": {
                "type": "custom",
                "item_schema": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}, "a": {"type": "string"}},
                },
            },
            "testing_criteria": [
                {
                    "type": "text_similarity",
                    "name": "rouge_l",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.a}}",
                    "evaluation_metric": "rouge_l",
                    "pass_threshold": 0.5,
                }
            ],
        },
    )
    evaluation.raise_for_status()
    eval_id = evaluation.json()["id"]
    started = time.perf_counter()
    run = http.post(
        f"/v1/evals/{eval_id}/runs",
        json={
            "data_source": {
                "type": "completions",
                "model": "tiny",
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{item.q}}"}],
                },
                "source": {
                    "type": "file_content",
                    "content": [{"item": {"q": q, "a": a}} for q, a in rows],
                },
                "sampling_params": {
                    "temperature": 0,
                    "seed": 0,
                    "max_completion_tokens": max_tokens,
                },
            }
        },
    )
    run.raise_for_status()
    body = run.json()
    while body["status"] not in TERMINAL:
        time.sleep(0.02)
        body = http.get(f"/v1/evals/{eval_id}/runs/{body['id']}").json()
    elapsed = time.perf_counter() - started
    if body["status"] != "completed" or body["result_counts"]["total"] != len(rows):
        raise RuntimeError(f"the eval run ended {body['status']}: {body.get('error')}")
    return elapsed


def _llamafactory_predict(
    work: Path, model_dir: Path, rows: list[tuple[str, str]], max_tokens: int, round_: int
) -> tuple[float, float]:
    """(whole command seconds, LLaMA-Factory's predict_samples_per_second)."""
    data = work / "lf-data"
    data.mkdir(exist_ok=True)
    (data / "bench.json").write_text(
        json.dumps([{"instruction": q, "input": "", "output": a} for q, a in rows])
    )
    (data / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
    output = work / f"lf-predict-{round_}"
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": False,
        "do_predict": True,
        "predict_with_generate": True,
        "finetuning_type": "full",
        "eval_dataset": "bench",
        "dataset_dir": str(data),
        "template": LLAMAFACTORY_TEMPLATE,
        "cutoff_len": 256,
        "max_new_tokens": max_tokens,
        "do_sample": False,
        "per_device_eval_batch_size": SLOTS,
        "output_dir": str(output),
        "overwrite_output_dir": True,
        "report_to": "none",
    }
    path = work / f"predict-{round_}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [str(LLAMAFACTORY_CLI), "train", str(path)], check=False, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"llamafactory-cli predict failed:\n{done.stderr[-3000:]}")
    whole = time.perf_counter() - started
    results = json.loads((output / "predict_results.json").read_text())
    return whole, float(results["predict_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = _rows(args.rows)
    toolchain = locate()
    with tempfile.TemporaryDirectory(prefix="forgeline-eval-speed-") as scratch:
        work = Path(scratch)
        model = write_tiny_model(work / "tiny")
        gguf = hf_to_gguf(toolchain, model.path, work / "tiny-f16.gguf")
        database = work / "gateway.sqlite3"
        key = make_key(database, Scope.ADMIN)
        gateway = Gateway(database, {"model_dirs": [str(work)]})
        gateway.start()
        served: list[float] = []
        whole: list[float] = []
        generation: list[float] = []
        try:
            headers: dict[str, Any] = {"Authorization": f"Bearer {key}"}
            with httpx.Client(
                base_url=gateway.url, headers=headers, timeout=600, trust_env=False
            ) as http:
                deployed = http.post(
                    "/v1/deployments",
                    json={
                        "name": "tiny",
                        "backend": "llamacpp",
                        "gguf": str(gguf),
                        "parallel": SLOTS,
                        "context_size": 256 * SLOTS,
                    },
                )
                deployed.raise_for_status()
                gateway.call(gateway.app.state.manager.settle())
                # The first run loads the graders' libraries (NLTK, rouge-score, jieba's
                # dictionary: about 5 s once per gateway process), which is no eval's cost.
                _served_run(http, rows[:2], args.max_tokens)
                for round_ in range(args.rounds):
                    served.append(args.rows / _served_run(http, rows, args.max_tokens))
                    seconds, rate = _llamafactory_predict(
                        work, model.path, rows, args.max_tokens, round_
                    )
                    whole.append(args.rows / seconds)
                    generation.append(rate)
        finally:
            gateway.stop()
    base = statistics.median(served)
    print(
        f"{args.rows} rows, at most {args.max_tokens} tokens each, greedy; medians of "
        f"{args.rounds} alternating rounds\n"
    )
    print("| path | samples/s | served ÷ this |")
    print("|---|---|---|")
    print(f"| Evals API run through llama-server ({SLOTS} slots) | {base:.2f} | 1.00x |")
    lf_whole = statistics.median(whole)
    lf_generation = statistics.median(generation)
    print(f"| llamafactory-cli predict, whole command | {lf_whole:.2f} | {base / lf_whole:.2f}x |")
    print(
        f"| llamafactory-cli predict, generation only (its own figure) | {lf_generation:.2f} "
        f"| {base / lf_generation:.2f}x |"
    )


if __name__ == "__main__":
    main()
