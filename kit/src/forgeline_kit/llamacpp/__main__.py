"""``forgeline-llamacpp``: build the pinned llama.cpp toolchain, or print where it is.

    forgeline-llamacpp build [--portable] [--jobs N]   build if missing, print the directory
    forgeline-llamacpp where                           print the located paths as JSON

``where`` finds FORGELINE_LLAMACPP_HOME if set, else the native, then the portable cache entry.
"""

from __future__ import annotations

import argparse
import sys

from forgeline_kit.llamacpp.build import ensure_built
from forgeline_kit.llamacpp.toolchain import ToolchainError, locate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgeline-llamacpp",
        description="Build and locate the pinned llama.cpp toolchain (cached outside the tree).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build if not cached; print the toolchain directory")
    build.add_argument(
        "--portable",
        action="store_true",
        help="no -march=native: binaries that run on any CPU of this architecture (images)",
    )
    build.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (all CPUs)")
    commands.add_parser("where", help="print the located toolchain's paths as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 with a message on stderr on failure)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            result = ensure_built(native=not args.portable, jobs=args.jobs)
            print(result.toolchain.home)
        else:
            print(locate().to_json())
    except ToolchainError as error:
        print(f"forgeline-llamacpp: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
