"""The rows of an eval data source: JSON objects ``{"item": {...}, "sample": {...}}``, the
``sample`` optional (OpenAI's ``jsonl`` data source, inline ``file_content`` or a file uploaded
with purpose ``evals``, one row per line)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "MAX_LISTED",
    "InvalidRows",
    "Row",
    "RowsTooLarge",
    "check_row",
    "count_rows",
    "read_rows",
]

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


class RowsTooLarge(InvalidRows):
    """A rows file past a limit of `count_rows`: ``limit`` names it (``"max_rows"`` or
    ``"max_line_bytes"``); reading stopped there."""

    def __init__(self, problem: str, limit: Literal["max_rows", "max_line_bytes"]) -> None:
        super().__init__([problem], 1)
        self.limit = limit


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


def count_rows(path: Path, *, max_rows: int, max_line_bytes: int) -> tuple[int, int]:
    """How many rows the JSONL file at `path` holds, and how many of them give a ``sample``;
    read a line at a time, so memory follows `max_line_bytes`, not the file.

    Raises:
        RowsTooLarge: more than `max_rows` rows, or a line longer than `max_line_bytes` (not
            counting its newline); reading stops there.
        InvalidRows: as `read_rows`.
    """
    rows = samples = 0
    problems = _Problems()
    with path.open("rb") as source:
        number = 0
        while raw := source.readline(max_line_bytes + 1):
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise RowsTooLarge(
                    f"line {number}: longer than {max_line_bytes} bytes, the most one row may take",
                    "max_line_bytes",
                )
            row = problems.row(number, raw)
            if row is None:
                continue
            rows += 1
            if rows > max_rows:
                raise RowsTooLarge(
                    f"line {number}: the file holds more than {max_rows} rows, the most one "
                    "file may hold",
                    "max_rows",
                )
            samples += row.sample is not None
    problems.check(found=rows > 0)
    return rows, samples


def parse_lines(lines: Iterable[bytes | str]) -> list[Row]:
    """As `read_rows`, over lines already read."""
    rows: list[Row] = []
    problems = _Problems()
    for number, raw in enumerate(lines, start=1):
        row = problems.row(number, raw)
        if row is not None:
            rows.append(row)
    problems.check(found=bool(rows))
    return rows


class _Problems:
    """The bad lines met so far: up to `MAX_LISTED` described, all counted."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.total = 0

    def row(self, number: int, raw: bytes | str) -> Row | None:
        """The row on line `number`; None for a blank line or a bad one (noted)."""
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if not line.strip():
                return None
            return check_row(json.loads(line))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.total += 1
            if len(self.listed) < MAX_LISTED:
                if isinstance(error, json.JSONDecodeError):
                    reason = f"not valid JSON ({error.msg})"
                elif isinstance(error, UnicodeDecodeError):
                    reason = "not UTF-8 text"
                else:
                    reason = str(error)
                self.listed.append(f"line {number}: {reason}")
            return None

    def check(self, *, found: bool) -> None:
        """Raise what was met, or that there was no row at all."""
        if not found and not self.listed:
            raise InvalidRows(["the file has no rows"], 1)
        if self.listed:
            raise InvalidRows(self.listed, self.total)
