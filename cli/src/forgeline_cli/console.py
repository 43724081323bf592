"""What every ``forgeline`` command prints the same way: exit codes, errors, JSON and sizes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Iterable
from typing import Any, Final, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "add_json_option",
    "fail",
    "human_size",
    "one_line",
    "print_json",
    "print_listing",
    "print_result",
]

#: Exit status when a service refused or failed the request, or the work did not succeed.
EXIT_FAILED: Final = 1
#: Exit status for a malformed command line or input files (as argparse's).
EXIT_USAGE: Final = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED: Final = 130


def one_line(text: str) -> str:
    """Multi-line service messages (a dataset's bad records) joined into one line."""
    joined = ""
    for line in (line.strip() for line in text.splitlines()):
        if line:
            joined += ("" if not joined else " " if joined.endswith(":") else "; ") + line
    return joined


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``forgeline: MESSAGE`` as one line on stderr; ``code``, for the command to return."""
    print(f"forgeline: {one_line(message)}", file=sys.stderr)
    return code


def _plain(value: Any) -> Any:
    """Protobuf messages and pydantic models (also inside lists and dicts) as JSON values."""
    if isinstance(value, Message):
        return json_format.MessageToDict(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def print_json(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as indented JSON with sorted keys (on stdout by default); protobuf
    messages in it are written as the API's JSON, pydantic models as their fields."""
    out = out or sys.stdout
    json.dump(_plain(value), out, indent=2, sort_keys=True)
    out.write("\n")


def print_result(value: Any, text: str, *, as_json: bool) -> int:
    """A command's result: ``value`` as JSON with ``--json``, else ``text``; exit code 0."""
    if as_json:
        print_json(value)
    else:
        print(text)
    return 0


def print_listing(
    values: Collection[Any], lines: Iterable[str], *, as_json: bool, empty: str | None = None
) -> int:
    """A listing: ``values`` as JSON with ``--json``, else one line each (``empty`` when there
    are none); exit code 0. ``lines`` is only read for text."""
    if as_json:
        print_json(list(values))
    elif not values:
        if empty is not None:
            print(empty)
    else:
        for line in lines:
            print(line)
    return 0


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: print the result as the API's JSON instead of text."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def human_size(count: int) -> str:
    """A byte count as ``512 B``, ``1.5 KiB`` ... up to GiB."""
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
