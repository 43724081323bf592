"""The demo loop inside the compose network (`scripts/compose-smoke.sh`, step 6).

Runs in the smoke client image (the trainer image plus the CLI and the OpenAI SDK) on the stack's
internal network, where the registry and converter answer gRPC and MinIO answers its presigned
URLs under the same names the services use:

1. make the tiny base model, register it, convert it to GGUF and serve it on the gateway;
2. upload the training data and fine-tune through the gateway with the OpenAI SDK;
3. ask the base and the fine-tuned model the same question through the gateway.

Exit status 0 when the fine-tuned model gives the trained answer and the base model does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

from forgeline_cli.walkthrough import (
    BASE_MODEL,
    ask,
    deploy_base_model,
    fine_tune,
    register_base_model,
    write_fact_dataset,
)
from forgeline_kit.tinymodel import DEMO_FACT, write_tiny_model


def say(message: str) -> None:
    """One progress line, flushed (compose run streams it)."""
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the loop; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gateway", default="http://gateway:8080")
    parser.add_argument("--registry", default="registry:50051")
    parser.add_argument("--converter", default="converter:50051")
    parser.add_argument("--api-key", default="smoke")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = register_base_model(args.registry, write_tiny_model(work / "base"))
        say(f"registered the tiny base model as {base}")
        ggufs = deploy_base_model(args.gateway, args.converter, base, api_key=args.api_key)
        say(f"converted to {', '.join(ggufs.values())}; serving {ggufs['q8_0']} as {BASE_MODEL}")
        client = OpenAI(base_url=f"{args.gateway}/v1", api_key=args.api_key, max_retries=0)
        job = fine_tune(
            client, write_fact_dataset(work / "fact.jsonl"), on_event=lambda m: say(f"  {m}")
        )
        if job.status != "succeeded" or job.fine_tuned_model is None:
            say(f"FAILED: the fine-tuning job ended {job.status}: {job.error}")
            return 1
        base_answer = ask(client, BASE_MODEL)
        tuned_answer = ask(client, job.fine_tuned_model)
    say(f"question:         {DEMO_FACT.question}")
    say(f"base model:       {base_answer!r}")
    say(f"fine-tuned model: {tuned_answer!r} ({job.fine_tuned_model})")
    say(f"demo loop took {time.monotonic() - started:.0f} s")
    if tuned_answer != DEMO_FACT.answer or DEMO_FACT.answer in base_answer:
        say(f"FAILED: expected the fine-tuned model alone to answer {DEMO_FACT.answer!r}")
        return 1
    say("OK: the fine-tuned model gives the trained answer through the gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
