"""`forgeline demo`: the main job on the embedded default, with nothing but a CPU.

It makes the tiny base model, teaches it one fact with LLaMA-Factory (LoRA SFT), merges the adapter,
converts both models to GGUF and quantizes them with llama.cpp, serves each with llama-server, and
asks both the same question. It exits non-zero unless the fine-tuned model gives the trained answer.

Today the steps run in-process through the same modules the trainer and converter services are
built on; driving them through the services and the OpenAI SDK is the pipeline issue (#7).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from forgeline_converter.llamacpp_tools import convert_hf_to_gguf, quantize
from forgeline_kit.llamacpp import Toolchain, locate
from forgeline_kit.llamacpp.server import LlamaServerOptions, start_llama_server
from forgeline_kit.subprocesses import offline_env
from forgeline_kit.tinymodel import (
    DEMO_FACT,
    LLAMAFACTORY_TEMPLATE,
    DatasetInfo,
    demo_dataset,
    write_tiny_model,
)
from forgeline_trainer.llamafactory.arguments import ExportArguments, TrainArguments
from forgeline_trainer.llamafactory.cli import export, train

# DESIGN.md's recipe for teaching a randomly initialised model one fact: LoRA on the linear layers
# alone barely moves a random model's loss, so embeddings and output head train fully alongside.
# Measured on the tiny model (2 cores): the loss is ~1e-4 after 30 epochs; 60 leave a margin.
FACT_COPIES = 16
FACT_EPOCHS = 60
FACT_LEARNING_RATE = 5e-3
QUANTIZATION = "Q8_0"
DATASET_NAME = "demo_fact"


def register(subparsers: Any) -> None:
    """Add `forgeline demo` to the root parser."""
    parser = subparsers.add_parser(
        "demo",
        help="fine-tune the tiny model on CPU and compare its answer with the base model's",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".forgeline/demo"),
        help="where the models and logs of this run go (emptied first; default: %(default)s)",
    )
    parser.set_defaults(run=run)


@contextmanager
def _step(title: str) -> Iterator[None]:
    print(f"==> {title} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"    done in {time.monotonic() - started:.1f} s", flush=True)


def _ask(toolchain: Toolchain, model: Path, log: Path) -> str:
    """One greedy chat completion from llama-server's OpenAI endpoint."""
    with start_llama_server(LlamaServerOptions(model=model), log, toolchain=toolchain) as server:
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": DEMO_FACT.question}],
                "max_tokens": 32,
                "temperature": 0,
                "seed": 0,
            },
            timeout=120,
        )
        response.raise_for_status()
        answer: str = response.json()["choices"][0]["message"]["content"]
        return answer.strip()


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the fine-tuned model gives the trained answer."""
    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = offline_env(work / "hf-home")
    toolchain = locate()
    started = time.monotonic()

    with _step("Making the tiny base model (Llama architecture, SentencePiece, ChatML)"):
        base = write_tiny_model(work / "base")

    with _step(f"Fine-tuning with LLaMA-Factory (LoRA SFT, {FACT_EPOCHS} epochs on CPU)"):
        data = work / "data"
        data.mkdir()
        info = demo_dataset("forgeline_alpaca_sft").info.model_copy(
            update={"file_name": f"{DATASET_NAME}.json"}
        )
        fact = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}
        (data / info.file_name).write_text(json.dumps([fact] * FACT_COPIES, indent=2))
        (data / "dataset_info.json").write_text(DatasetInfo({DATASET_NAME: info}).to_json())
        result = train(
            TrainArguments(
                model_name_or_path=str(base.path),
                dataset=DATASET_NAME,
                dataset_dir=str(data),
                template=LLAMAFACTORY_TEMPLATE,
                additional_target="lm_head,embed_tokens",
                output_dir=str(work / "adapter"),
                per_device_train_batch_size=FACT_COPIES,
                num_train_epochs=FACT_EPOCHS,
                learning_rate=FACT_LEARNING_RATE,
                logging_steps=10,
            ),
            work,
            env,
        )
        if result.losses:
            print(f"    loss {result.losses[0]:.3g} -> {result.losses[-1]:.3g}")

    with _step("Merging the adapter into the base model (llamafactory-cli export)"):
        export(
            ExportArguments(
                model_name_or_path=str(base.path),
                adapter_name_or_path=str(result.output_dir),
                template=LLAMAFACTORY_TEMPLATE,
                export_dir=str(work / "merged"),
            ),
            work,
            env,
        )

    ggufs: dict[str, Path] = {}
    for label, model_dir in (("base", base.path), ("fine-tuned", work / "merged")):
        with _step(f"Converting the {label} model to GGUF and quantizing to {QUANTIZATION}"):
            f16 = work / f"{label}-f16.gguf"
            ggufs[label] = work / f"{label}-{QUANTIZATION.lower()}.gguf"
            convert_hf_to_gguf(toolchain, model_dir, f16, "f16", env)
            quantize(toolchain, f16, ggufs[label], QUANTIZATION, env)

    answers: dict[str, str] = {}
    for label, gguf in ggufs.items():
        with _step(f"Asking the {label} model through llama-server"):
            answers[label] = _ask(toolchain, gguf, work / f"llama-server-{label}.log")

    print()
    print(f"Question:           {DEMO_FACT.question}")
    print(f"Base model:         {answers['base']!r}")
    print(f"Fine-tuned model:   {answers['fine-tuned']!r}")
    print(f"Trained answer:     {DEMO_FACT.answer!r}")
    print(f"Total time:         {time.monotonic() - started:.0f} s   (artifacts in {work})")
    print()
    print(
        "Coming next: the same loop through the services — upload the data and start the job\n"
        "with the OpenAI SDK against the gateway, every artifact versioned in the registry."
    )
    if answers["fine-tuned"] != DEMO_FACT.answer:
        print("FAILED: the fine-tuned model did not give the trained answer.")
        return 1
    if DEMO_FACT.answer in answers["base"]:
        print("FAILED: the base model already knew the answer, so the demo proves nothing.")
        return 1
    print("OK: the fine-tuned model learned the fact; the base model does not know it.")
    return 0
