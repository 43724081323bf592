"""`forgeline up`: the embedded stack, left running, with the tiny base model served.

What `make up` runs. It prints where everything is (the gateway URL, every `/metrics`, the
registry's contents) and example calls, then waits; Ctrl-C stops every service it started.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from forgeline_cli.stack import LocalStack, run_on
from forgeline_cli.walkthrough import BASE_MODEL, deploy_base_model, register_base_model
from forgeline_kit.tinymodel import write_tiny_model

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add `forgeline up` to the root parser."""
    parser = subparsers.add_parser(
        "up", help="start the four services locally and leave them running (Ctrl-C stops them)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".forgeline/stack"),
        help="where the services keep their state and logs (kept between runs; "
        "default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the stack, print where to look, wait for Ctrl-C or SIGTERM."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())

    def serve(stack: LocalStack) -> int:
        print("Starting the registry, trainer, converter and gateway ...", flush=True)
        stack.start()
        base = register_base_model(
            stack.registry_target, write_tiny_model(stack.state_dir / "base")
        )
        ggufs = deploy_base_model(stack.gateway_url, stack.services["converter"].target, base)
        _print_summary(stack, base, ggufs["q8_0"])
        stopping.wait()
        print("Stopping ...", flush=True)
        return 0

    return run_on(LocalStack(args.state_dir, gateway_port=args.port), serve)


def _print_summary(stack: LocalStack, base: str, gguf: str) -> None:
    url = stack.gateway_url
    print()
    for name, where in stack.env_summary().items():
        print(f"  {name:<22} {where}")
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

  forgeline models list --registry {stack.registry_target}

Ctrl-C stops everything.""",
        flush=True,
    )
