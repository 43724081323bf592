"""`forgeline`, the project's one command.

Each area of the product adds its subcommands from its own module through a `register(subparsers)`
function, so this file only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from forgeline_cli.convert_commands import register as register_convert
from forgeline_cli.demo import register as register_demo
from forgeline_cli.deploy_commands import register as register_deploy
from forgeline_cli.eval_commands import register as register_eval
from forgeline_cli.fine_tuning_commands import register as register_fine_tuning
from forgeline_cli.jobs_commands import register as register_jobs
from forgeline_cli.registry_commands import register_registry_commands
from forgeline_cli.train_commands import register as register_train
from forgeline_cli.up import register as register_up


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="forgeline",
        description="Fine-tune an open LLM and serve it: one command for the whole loop.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_demo(subparsers)
    register_up(subparsers)
    register_registry_commands(subparsers)
    register_train(subparsers)
    register_jobs(subparsers)
    register_convert(subparsers)
    register_deploy(subparsers)
    register_fine_tuning(subparsers)
    register_eval(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `forgeline` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_code: int = args.run(args)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
