"""``forgeline-tinymodel OUT_DIR [--seed N]``: write the tiny model and print what was written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .spec import DEFAULT_SEED


def main(argv: Sequence[str] | None = None) -> int:
    """Write the tiny model into OUT_DIR and print its files' sha256 digests as JSON."""
    parser = argparse.ArgumentParser(
        prog="forgeline-tinymodel",
        description="Write the deterministic tiny Llama model (ChatML, SentencePiece) offline.",
    )
    parser.add_argument(
        "out_dir", type=Path, help="directory to create (must not exist or be empty)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weights seed")
    args = parser.parse_args(argv)

    from .factory import write_tiny_model

    try:
        model = write_tiny_model(args.out_dir, seed=args.seed)
    except FileExistsError as error:
        print(f"forgeline-tinymodel: {error}", file=sys.stderr)
        return 1
    print(model.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
