"""`forgeline up`: the embedded stack, left running, with the tiny base model served.

What `make up` runs. It prints where everything is (the gateway URL, every `/metrics`, the
registry's contents) and example calls, then waits; Ctrl-C, SIGTERM or a closed terminal stops
every service it started (and were it killed outright, they would die with it). Run again on the
same state directory, it starts on what the earlier run kept: the base model is not made again,
and deployments, jobs and keys are where they were.
"""

from __future__ import annotations

import argparse
import shutil
import signal
from pathlib import Path
from typing import Any

from forgeline_cli.stack import Interrupted, LocalStack, run_on
from forgeline_cli.stack_record import DEFAULT_STATE_DIR
from forgeline_cli.walkthrough import (
    BASE_MODEL,
    deploy_base_model,
    read_kept_state,
    register_base_model,
)
from forgeline_kit.tinymodel import TinyModel, write_tiny_model

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add `forgeline up` to the root parser."""
    parser = subparsers.add_parser(
        "up", help="start the four services locally and leave them running (Ctrl-C stops them)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the services keep their state and logs; a later run starts on what an "
        "earlier one kept there (models, jobs, keys, deployments) (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the stack on the state it kept (or a new one), print where to look, and serve until
    Ctrl-C, SIGTERM or SIGHUP."""

    def serve(stack: LocalStack) -> int:
        print("Starting the registry, trainer, converter and gateway ...", flush=True)
        stack.start()
        kept = read_kept_state(stack.registry_target, stack.gateway_url)
        if kept.base_model is None:
            base = register_base_model(stack.registry_target, _fresh_tiny_model(stack.state_dir))
        else:
            base = kept.base_model
            print(f"Resuming on the state kept in {stack.state_dir}: {kept.summary()}", flush=True)
        if BASE_MODEL in kept.deployments:
            gguf = kept.deployments[BASE_MODEL] or "(restored)"
        else:
            gguf = deploy_base_model(stack.gateway_url, stack.services["converter"].target, base)[
                "q8_0"
            ]
        _print_summary(stack, base, gguf)
        try:
            while True:
                signal.pause()
        except (KeyboardInterrupt, Interrupted):
            print("Stopping ...", flush=True)
        return 0

    return run_on(LocalStack(args.state_dir, gateway_port=args.port), serve)


def _fresh_tiny_model(state_dir: Path) -> TinyModel:
    """The tiny base model, written anew: a directory left by a run that stopped before it
    registered the model is replaced."""
    target = state_dir / "base"
    shutil.rmtree(target, ignore_errors=True)
    return write_tiny_model(target)


def _print_summary(stack: LocalStack, base: str, gguf: str) -> None:
    url = stack.gateway_url
    print()
    for name, where in stack.env_summary().items():
        print(f"  {name:<22} {where}")
    print(f"  {'console (web UI)':<22} {url}/console/")
    print(f"  {'registry contents':<22} {base} (HF), {gguf} (GGUF, served as '{BASE_MODEL}')")
    print(f"  {'logs':<22} {stack.state_dir / 'logs'}")
    print(
        f"""
Try it:
  curl {url}/v1/models
  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "{BASE_MODEL}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="local")
  file = client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
  job = client.fine_tuning.jobs.create(model="{BASE_MODEL}", training_file=file.id)

  forgeline models list        (the CLI finds this stack by itself)

Ctrl-C stops everything.""",
        flush=True,
    )
