"""The rows of an eval data source: JSON objects ``{"item": {...}, "sample": {...}}``, the
``sample`` optional (OpenAI's ``jsonl`` data source, inline ``file_content`` or a file uploaded
with purpose ``evals``, one row per line)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["MAX_LISTED", "InvalidRows", "Row", "check_row", "read_rows"]

#: How many bad lines an error lists.
MAX_LISTED: Final = 20

_KEYS: Final = frozenset({"item", "sample"})


@dataclass(frozen=True)
class Row:
    """One row: the ``item`` namespace, and the ``sample`` namespace if the row gives it."""

    item: dict[str, Any]
    sample: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return (
            {"item": self.item}
            if self.sample is None
            else {"item": self.item, "sample": self.sample}
        )


class InvalidRows(ValueError):  # noqa: N818 (as the kit's InvalidDataset)
    """Rows that are not ``{"item": {...}, "sample": {...}}``: each problem names its line."""

    def __init__(self, problems: list[str], total: int) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.total = total

    def listed(self) -> str:
        """The problems, one a line, with a count of those not listed."""
        more = self.total - len(self.problems)
        return "\n".join(self.problems) + (f"\n... and {more} more" if more > 0 else "")


def check_row(value: Any) -> Row:
    """`value` as a row.

    Raises:
        ValueError: not an object with an ``item`` object and an optional ``sample`` object.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a JSON object with an 'item' (got {type(value).__name__})")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}: a row has 'item' and optionally 'sample'")
    item, sample = value.get("item"), value.get("sample")
    if item is None:
        raise ValueError("'item' is missing")
    if not isinstance(item, Mapping):
        raise ValueError(f"'item' must be a JSON object (got {type(item).__name__})")
    if sample is not None and not isinstance(sample, Mapping):
        raise ValueError(f"'sample' must be a JSON object (got {type(sample).__name__})")
    return Row(dict(item), dict(sample) if sample is not None else None)


def read_rows(path: Path) -> list[Row]:
    """The rows of a JSONL file (blank lines skipped).

    Raises:
        InvalidRows: a line that is not JSON or not a row, or no row at all; up to `MAX_LISTED`
            problems, each naming its line.
    """
    with path.open("rb") as source:
        return parse_lines(source)


def parse_lines(lines: Iterable[bytes | str]) -> list[Row]:
    """As `read_rows`, over lines already read."""
    rows: list[Row] = []
    problems: list[str] = []
    total = 0
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if not line.strip():
                continue
            rows.append(check_row(json.loads(line)))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            total += 1
            if len(problems) < MAX_LISTED:
                if isinstance(error, json.JSONDecodeError):
                    reason = f"not valid JSON ({error.msg})"
                elif isinstance(error, UnicodeDecodeError):
                    reason = "not UTF-8 text"
                else:
                    reason = str(error)
                problems.append(f"line {number}: {reason}")
    if not rows and not problems:
        problems, total = ["the file has no rows"], 1
    if problems:
        raise InvalidRows(problems, total)
    return rows
