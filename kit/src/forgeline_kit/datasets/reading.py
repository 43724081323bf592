"""Reading a dataset file as a stream of records, within its :class:`~.spec.DatasetLimits`.

Files are read a record at a time, never whole: a JSONL or text file one line at a time (a line at
most ``max_record_bytes`` long), a JSON list one element at a time (:class:`_JsonList`). Memory
then stays near one record whatever the file's size, which matters where uploads are checked (the
gateway takes files of hundreds of MB from its callers).

A record that cannot be decoded is handed on as an :class:`_Unreadable` rather than raised, so
checking reports it beside the file's other bad records.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Final

from .spec import (
    DEFAULT_LIMITS,
    DatasetFormat,
    DatasetLimits,
    DatasetSpec,
    DatasetTooLarge,
    InvalidDataset,
)


def _records(
    spec: DatasetSpec, limits: DatasetLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, Any]]:
    records = _read_records(spec, limits)
    if limits.max_records is None:
        yield from records
        return
    for count, record in enumerate(records, 1):
        if count > limits.max_records:
            raise DatasetTooLarge(
                spec.name,
                f"{record[0]}: the file holds more than {limits.max_records} records, the most "
                "one dataset may hold",
                limit="max_records",
                value=limits.max_records,
            )
        yield record


def _read_records(spec: DatasetSpec, limits: DatasetLimits) -> Iterator[tuple[str, Any]]:
    suffix = spec.path.suffix.lower()
    cap = limits.max_record_bytes
    if suffix == ".txt":
        if spec.format is not DatasetFormat.PRETRAIN_TEXT:
            raise InvalidDataset(spec.name, ["a .txt file can only be pre-training text"], 1)
        with spec.path.open("rb") as source:
            for number, raw in _lines(source, spec.name, cap):
                text = _decoded(raw)
                if isinstance(text, _Unreadable):
                    yield f"line {number}", text
                    continue
                # As the `datasets` text builder LLaMA-Factory reads .txt with splits a line.
                for piece in text.splitlines():
                    if piece.strip():
                        yield f"line {number}", {"text": piece}
    elif suffix == ".jsonl":
        # OpenAI's tools say "line N" of their JSONL files; so do its layouts here.
        word = "line" if spec.format.openai else "record"
        with spec.path.open("rb") as source:
            for number, raw in _lines(source, spec.name, cap):
                if raw.strip():
                    yield f"{word} {number}", _parsed(raw)
    elif spec.format.openai:
        raise InvalidDataset(
            spec.name, ["OpenAI fine-tuning files are JSON Lines: one JSON object per line"], 1
        )
    elif suffix == ".json":
        with spec.path.open("rb") as source:
            for number, record in enumerate(_JsonList(source, spec.name, cap), 1):
                yield f"record {number}", record
    else:
        raise InvalidDataset(
            spec.name, [f"unsupported file type '{suffix}': use .json, .jsonl or .txt"], 1
        )


def _lines(source: BinaryIO, name: str, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """The lines of `source` (with their ending) and their numbers, 1 the first.

    Raises:
        DatasetTooLarge: a line longer than `max_bytes` (not counting its ``\\n``); no more than
            that is read of it.
    """
    number = 0
    while line := source.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            raise _record_too_long(name, f"line {number}", max_bytes)
        yield number, line


def _record_too_long(name: str, where: str, max_bytes: int) -> DatasetTooLarge:
    return DatasetTooLarge(
        name,
        f"{where}: longer than {max_bytes} bytes, the most one record may take",
        limit="max_record_bytes",
        value=max_bytes,
    )


def _decoded(raw: bytes) -> str | _Unreadable:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return _Unreadable(f"not UTF-8 text (byte {error.start} of the line cannot be read)")


def _parsed(raw: bytes) -> Any:
    text = _decoded(raw)
    if isinstance(text, _Unreadable):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return _Unreadable(f"not valid JSON ({error.msg})")


class _Unreadable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


#: How much a JSON list's reader reads at a time (more while one record is unfinished).
_CHUNK: Final = 256 * 1024
#: JSON's whitespace.
_BLANK: Final = re.compile(r"[ \t\n\r]+")
#: Outside a string: what opens or closes one; inside: what may end it.
_STRUCTURE: Final = re.compile(r'["\[\]{}]')
_IN_STRING: Final = re.compile(r'["\\]')
_SCALAR_END: Final = re.compile(r"[\s,\]}]")


class _JsonList:
    """The elements of a file holding one JSON list, parsed one at a time.

    The standard library parses only whole documents, so each element is parsed with
    ``raw_decode`` from a buffer that holds the element and what follows; an element not yet
    whole in the buffer is read further, up to `max_bytes`. Line numbers in errors count from the
    file's start, as ``json.loads`` of the whole file would.
    """

    def __init__(self, source: BinaryIO, name: str, max_bytes: int, lead: int | None = None):
        self.source = source
        self.name = name
        self.max_bytes = max_bytes
        #: How much blank space may come before the first element (None: any).
        self.lead = lead
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.parser = json.JSONDecoder()
        self.buffer = ""
        self.pos = 0
        #: The line of ``buffer[pos]``.
        self.line = 1
        #: Bytes read from the source so far.
        self.offset = 0
        self.eof = False
        #: The number of the element being read, 1 the first.
        self.index = 0
        #: The file is not UTF-8 past the buffer: raised when more is read.
        self.broken: InvalidDataset | None = None

    def __iter__(self) -> Iterator[Any]:
        first = self._skip_blank(self.lead)
        if first != "[":
            raise self._not_a_list(first)
        self._advance(self.pos + 1)
        if self._skip_blank() == "]":
            self._advance(self.pos + 1)
        else:
            while True:
                self.index += 1
                yield self._element()
                after = self._skip_blank()
                if after not in (",", "]"):
                    raise self._syntax("Expecting ',' delimiter")
                self._advance(self.pos + 1)
                if after == "]":
                    break
                self._skip_blank()
        if self._skip_blank() != "":
            raise self._syntax("Extra data")

    def _not_a_list(self, first: str) -> InvalidDataset:
        if first == "\ufeff":
            problem = "the file starts with a byte order mark (BOM): save it as UTF-8 without one"
        elif first == "":
            problem = "the file holds no records"
        elif first in '{"-0123456789tfn':
            problem = "the file must hold a JSON list of records"
        else:
            return self._syntax("Expecting value")
        return InvalidDataset(self.name, [problem], 1)

    def _syntax(self, message: str, line: int | None = None) -> InvalidDataset:
        return InvalidDataset(
            self.name, [f"line {line or self.line}: not valid JSON ({message})"], 1
        )

    def _element(self) -> Any:
        while True:
            try:
                value, end = self.parser.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                # Unfinished in the buffer, or not JSON? Read on unless the element's brackets
                # and quotes close within what is buffered (then it is not JSON) or the file ends.
                if self.eof or _element_end(self.buffer, self.pos) is not None:
                    line = self.line + self.buffer.count("\n", self.pos, error.pos)
                    raise self._syntax(error.msg, line) from error
                self._read_on()
                continue
            if end == len(self.buffer) and not self.eof:
                # A number may go on in the next chunk ("12" of "123").
                self._read_on()
                continue
            span = end - self.pos
            # A character takes one to four bytes: encode only when that can tell.
            if span > self.max_bytes or (
                4 * span > self.max_bytes
                and len(self.buffer[self.pos : end].encode("utf-8")) > self.max_bytes
            ):
                raise self._too_long()
            self._advance(end)
            return value

    def _too_long(self) -> DatasetTooLarge:
        return _record_too_long(
            self.name, f"record {self.index} (from line {self.line})", self.max_bytes
        )

    def _read_on(self) -> None:
        """Read more of the unfinished element at ``pos``, refusing one past `max_bytes`."""
        pending = len(self.buffer) - self.pos
        if pending > self.max_bytes:
            raise self._too_long()
        # Twice what is pending at least: re-parsing the element each time stays linear.
        self._fill(max(_CHUNK, pending))

    def _fill(self, size: int) -> None:
        if self.broken is not None:
            raise self.broken
        self.buffer = self.buffer[self.pos :]
        self.pos = 0
        chunk = self.source.read(size)
        self.eof = not chunk
        pending = self.decoder.getstate()[0]
        try:
            self.buffer += self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as error:
            # Keep the text before the bad byte: the error is raised when it is needed, so
            # bytes after the record detection reads cannot fail detection.
            data = pending + chunk
            self.buffer += data[: error.start].decode("utf-8")
            self.eof = False
            line = self.line + self.buffer.count("\n")
            at = self.offset - len(pending) + error.start
            self.broken = InvalidDataset(
                self.name,
                [f"line {line}: not UTF-8 text (byte {at} of the file cannot be read)"],
                1,
            )
        self.offset += len(chunk)

    def _skip_blank(self, limit: int | None = None) -> str:
        """The character after blank space from ``pos`` on ("" at the end of the file).

        Raises:
            InvalidDataset: more than `limit` characters of blank space.
        """
        skipped = 0
        while True:
            match = _BLANK.match(self.buffer, self.pos)
            end = match.end() if match else self.pos
            skipped += end - self.pos
            self._advance(end)
            if limit is not None and skipped > limit:
                raise InvalidDataset(
                    self.name, [f"no record starts in the first {limit} bytes of the file"], 1
                )
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.eof:
                return ""
            self._fill(_CHUNK)

    def _advance(self, to: int) -> None:
        self.line += self.buffer.count("\n", self.pos, to)
        self.pos = to


def _element_end(text: str, start: int) -> int | None:
    """Where the JSON value at ``text[start]`` ends, if its brackets and quotes close within
    `text` (they are matched, not checked: ``json`` says what is wrong)."""
    if text[start] not in '[{"':
        found = _SCALAR_END.search(text, start)
        return found.start() if found else None
    depth, at = 0, start
    while found := _STRUCTURE.search(text, at):
        at = found.end()
        if found.group() == '"':
            while True:
                inside = _IN_STRING.search(text, at)
                if inside is None:
                    return None
                at = inside.end() + (1 if inside.group() == "\\" else 0)
                if inside.group() == '"':
                    break
            if depth == 0:
                return at
        elif found.group() in "[{":
            depth += 1
        else:
            depth -= 1
            if depth <= 0:
                return at
    return None
