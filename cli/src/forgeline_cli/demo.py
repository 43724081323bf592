"""`forgeline demo`: the main job on the embedded default, with nothing but a CPU.

It starts the four services as local processes (registry, trainer, converter, gateway), makes the
tiny base model, registers it and serves it, then fine-tunes it through the OpenAI SDK exactly as
an application would (upload the data, create the job, follow its events), and asks the base and
the fine-tuned model the same question through the gateway. It exits non-zero unless the
fine-tuned model gives the trained answer and the base model does not, and stops everything it
started.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openai import OpenAI

from forgeline_cli.console import EXIT_FAILED
from forgeline_cli.stack import LocalStack, run_on
from forgeline_cli.walkthrough import (
    BASE_MODEL,
    ask,
    deploy_base_model,
    fine_tune,
    register_base_model,
    write_fact_dataset,
)
from forgeline_kit.tinymodel import DEMO_FACT, write_tiny_model

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add `forgeline demo` to the root parser."""
    parser = subparsers.add_parser(
        "demo",
        help="fine-tune the tiny model through the services and the OpenAI SDK, then compare "
        "its answer with the base model's",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".forgeline/demo"),
        help="state, models and logs of this run (emptied first; default: %(default)s)",
    )
    parser.set_defaults(run=run)


@contextmanager
def _step(title: str) -> Iterator[None]:
    print(f"==> {title} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"    done in {time.monotonic() - started:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the fine-tuned model gives the trained answer."""
    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    return run_on(LocalStack(work / "stack"), lambda stack: _run(stack, work, started))


def _run(stack: LocalStack, work: Path, started: float) -> int:
    with _step("Starting the registry, trainer, converter and gateway"):
        stack.start()
    converter = stack.services["converter"].target
    with _step("Making the tiny base model and registering it"):
        base = register_base_model(stack.registry_target, write_tiny_model(work / "base"))
        print(f"    registered {base}")
    with _step("Converting the base model to GGUF Q8_0 and serving it"):
        ggufs = deploy_base_model(stack.gateway_url, converter, base)
        print(
            f"    registered {', '.join(ggufs.values())}; serving {ggufs['q8_0']} as '{BASE_MODEL}'"
        )

    client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="local-demo")
    data = write_fact_dataset(work / "fact.jsonl")
    with _step("Fine-tuning through the OpenAI SDK (LoRA SFT, hyperparameters auto, on CPU)"):
        job = fine_tune(client, data, on_event=lambda message: print(f"    {message}", flush=True))
    if job.status != "succeeded" or job.fine_tuned_model is None:
        print(f"FAILED: the job ended {job.status}: {job.error}")
        print(f"Service logs: {stack.state_dir / 'logs'}")
        return EXIT_FAILED

    answers = {}
    for label, model in (("base", BASE_MODEL), ("fine-tuned", job.fine_tuned_model)):
        with _step(f"Asking the {label} model through the gateway"):
            answers[label] = ask(client, model)

    print()
    print(f"Question:           {DEMO_FACT.question}")
    print(f"Base model:         {answers['base']!r}   ({BASE_MODEL})")
    print(f"Fine-tuned model:   {answers['fine-tuned']!r}   ({job.fine_tuned_model})")
    print(f"Trained answer:     {DEMO_FACT.answer!r}")
    print(f"Total time:         {time.monotonic() - started:.0f} s   (state and logs in {work})")
    print()
    if answers["fine-tuned"] != DEMO_FACT.answer:
        print("FAILED: the fine-tuned model did not give the trained answer.")
        return EXIT_FAILED
    if DEMO_FACT.answer in answers["base"]:
        print("FAILED: the base model already knew the answer, so the demo proves nothing.")
        return EXIT_FAILED
    print("OK: the fine-tuned model learned the fact; the base model does not know it.")
    return 0
