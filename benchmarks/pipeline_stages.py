"""Wall time of each pipeline stage for the tiny model, and the orchestration overhead.

    .venv/bin/python benchmarks/pipeline_stages.py [--rounds 1] [--serve merged|adapter]

Runs the demo's job (LoRA SFT of the tiny model, 60 epochs, then merge, GGUF f16 + Q8_0, deploy)
through the four services started as local processes, exactly as `make demo` does, and reads the
stage times from the services themselves: the trainer's event timestamps and its tools' process
times (`train_process_seconds`, `export_process_seconds` in the job result), the converter's
conversion times and its tools' own times (`ConversionResult.timings`), and the job's end as the
client sees it. The overhead is the job's total wall time minus the sum of the tools' own run
times (LLaMA-Factory train and export, llama.cpp convert/quantize/verify, llama-server start):
everything Forgeline adds — gRPC, registry transfers, hashing, polling, bookkeeping.
Goal (issue 7): under 5 s per job. ``--serve merged`` (the default here) deploys the Q8_0 GGUF
on a process of its own, as every job did when the goal was set; ``--serve adapter`` (the
product's default since) also counts the adapter's placement on the base and its agreement check
against the merged GGUF, whose llama-server starts are not in the tools' time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import (
    deploy_base_model,
    fine_tune,
    register_base_model,
    write_fact_dataset,
)
from forgeline_kit.grpc.client import make_channel
from forgeline_kit.tinymodel import write_tiny_model
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

# Converter timings that are not a tool's own run time (transfers and bookkeeping).
_CONVERTER_NON_TOOL = {"download", "worker", "register"}


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds) + timestamp.nanos / 1e9


async def _service_figures(stack: LocalStack, trainer_job_id: str, job_id: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with make_channel(stack.services["trainer"].target) as channel:
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await trainer.GetJob(trainer_pb2.GetJobRequest(job_id=trainer_job_id))
        events = await trainer.ListJobEvents(
            trainer_pb2.ListJobEventsRequest(job_id=trainer_job_id, page_size=1000)
        )
    changes = {
        trainer_pb2.JobState.Name(e.stage_change.state): _seconds(e.time)
        for e in events.events
        if e.WhichOneof("payload") == "stage_change"
    }
    order = ["JOB_STATE_VALIDATING", "JOB_STATE_TRAINING", "JOB_STATE_EXPORTING"]
    order += ["JOB_STATE_REGISTERING", "JOB_STATE_SUCCEEDED"]
    for start, end in itertools.pairwise(order):
        if start in changes and end in changes:
            name = start.removeprefix("JOB_STATE_").lower()
            figures[f"trainer {name}"] = changes[end] - changes[start]
    figures["trainer queued->succeeded"] = changes["JOB_STATE_SUCCEEDED"] - _seconds(
        job.create_time
    )
    figures["tool: llamafactory train"] = job.result.metrics.get("train_process_seconds", 0.0)
    figures["tool: llamafactory export"] = job.result.metrics.get("export_process_seconds", 0.0)
    figures["trainer end"] = changes["JOB_STATE_SUCCEEDED"]

    async with make_channel(stack.services["converter"].target) as channel:
        converter = converter_pb2_grpc.ConverterServiceStub(channel)
        listing = await converter.ListConversions(
            converter_pb2.ListConversionsRequest(page_size=1000)
        )
    tools = 0.0
    for conversion in listing.conversions:
        if not conversion.request_id.startswith(job_id):
            continue
        label = conversion.request_id.removeprefix(job_id + "-")
        figures[f"converter {label}"] = _seconds(conversion.end_time) - _seconds(
            conversion.create_time
        )
        figures["converter end"] = max(
            figures.get("converter end", 0.0), _seconds(conversion.end_time)
        )
        for name, duration in conversion.result.timings.items():
            if name not in _CONVERTER_NON_TOOL:
                tools += _seconds(duration)
    figures["tool: llama.cpp (convert, quantize, verify)"] = tools
    return figures


def _llama_server_start_seconds(stack: LocalStack, model: str, gguf: str) -> float:
    """How long the gateway's llama-server took to load the fine-tuned model: its GGUF `gguf`
    deployed again under another name, timed from request to ready."""
    started = time.monotonic()
    response = httpx.post(
        f"{stack.gateway_url}/v1/deployments",
        json={"name": f"{model}-again", "backend": "llamacpp", "registry_gguf": gguf},
        timeout=300,
    )
    response.raise_for_status()
    return time.monotonic() - started


def run_once(work: Path, serve: str) -> dict[str, float]:
    with LocalStack(work / "stack") as stack:
        base = register_base_model(stack.registry_target, write_tiny_model(work / "base"))
        deploy_base_model(stack.gateway_url, stack.services["converter"].target, base)
        client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="bench", max_retries=0)
        data = write_fact_dataset(work / "fact.jsonl")
        created: list[float] = []

        def on_event(message: str) -> None:
            # fine_tune reports the upload right before it creates the job.
            if message.startswith("uploaded ") and not created:
                created.append(time.time())

        job = fine_tune(
            client,
            data,
            on_event=on_event,
            poll_seconds=0.2,
            forgeline={"deploy": {"serve": serve}},
        )
        ended = time.time()
        if job.status != "succeeded" or job.fine_tuned_model is None:
            raise SystemExit(f"the job ended {job.status}: {job.error}")
        detail = httpx.get(f"{stack.gateway_url}/v1/fine_tuning/jobs/{job.id}", timeout=30).json()
        figures = asyncio.run(
            _service_figures(stack, detail["forgeline"]["trainer_job_id"], job.id)
        )
        figures["tool: llama-server start"] = _llama_server_start_seconds(
            stack, job.fine_tuned_model, detail["forgeline"]["outputs"]["gguf"]["q8_0"]
        )
        figures["total (create -> succeeded, seen by the client)"] = ended - created[0]
        figures["deploy (converter end -> succeeded)"] = ended - figures.pop("converter end")
        figures.pop("trainer end")
        tools = sum(v for k, v in figures.items() if k.startswith("tool: "))
        figures["tools' own run time, summed"] = tools
        figures["orchestration overhead (total - tools)"] = (
            figures["total (create -> succeeded, seen by the client)"] - tools
        )
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--serve", choices=["merged", "adapter"], default="merged")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as tmp:
            rounds.append(run_once(Path(tmp), args.serve))
    print(
        f"\nPipeline stages, tiny model, served {args.serve}, median of {len(rounds)} run(s) "
        "(seconds)\n"
    )
    print(f"| {'stage':<52} | {'seconds':>8} |")
    print(f"|{'-' * 54}|{'-' * 10}|")
    for name in rounds[0]:
        value = statistics.median(r[name] for r in rounds if name in r)
        print(f"| {name:<52} | {value:>8.2f} |")


if __name__ == "__main__":
    main()
