"""Check dataset files record by record, and write LLaMA-Factory's ``dataset_info.json``.

Shared because the gateway checks uploads (the Files API) with the same rules the trainer applies
before training.

Users hand the trainer data files and say how they are laid out (:class:`DatasetSpec`); the
trainer checks every record before any GPU time is spent — errors name the record (1 is the
first) and the field, "record 17: 'output' is missing" — and then writes the
``dataset_info.json`` LLaMA-Factory reads. Users never write that file.

OpenAI's fine-tuning files (chat JSONL ``{"messages": [...]}`` and preference JSONL
``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``) are
checked with OpenAI's rules, errors naming the line and field ("line 3: messages[1].role: must be
one of system, user, assistant, tool (got 'bot')"), and rewritten for LLaMA-Factory as sharegpt by
:func:`prepare_for_llamafactory`. :func:`detect_dataset` tells an uploaded file's layout.

Files are read as a stream, a record at a time, within :class:`DatasetLimits` (how many records,
how long one may be): a JSONL or text line at a time, a ``.json`` list an element at a time. The
``.json`` list is parsed incrementally rather than refused past some size: LLaMA-Factory (through
``datasets``' json builder) reads both layouts, users hand alpaca/sharegpt data as ``.json`` lists
of any size, and parsing one whole would cost several times its size in memory wherever uploads
are checked. :func:`detect_dataset` reads only the file's first record.

The rules follow LLaMA-Factory's converters (``llamafactory.data.converter``): alpaca records need
a prompt and a response (or chosen and rejected for preference data); sharegpt conversations
alternate user/observation and assistant/function_call turns after an optional system turn, end
with the assistant (or, for preference data, with the user before a chosen/rejected pair).
"""

from __future__ import annotations

import codecs
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetColumns, DatasetInfo, DatasetInfoEntry, DatasetTags

__all__ = [
    "ACCEPTED_LAYOUTS",
    "DEFAULT_LIMITS",
    "DETECT_LEAD_BYTES",
    "DatasetFormat",
    "DatasetLimits",
    "DatasetSpec",
    "DatasetTooLarge",
    "InvalidDataset",
    "detect_dataset",
    "detect_format",
    "prepare_for_llamafactory",
    "validate_dataset",
    "write_dataset_info",
]

#: How many record errors one report lists; the rest are counted.
MAX_REPORTED: Final = 20

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

#: How much blank space may come before an uploaded file's first record when its layout is
#: detected: detection reads this and the first record, never more.
DETECT_LEAD_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class DatasetLimits:
    """How much of a dataset file checking reads, so memory and time stay bounded whatever the
    file holds.

    Files are read a record at a time, so memory follows `max_record_bytes`, not the file's size.

    Attributes:
        max_records: the most records a file may hold (None: any number).
        max_record_bytes: the most bytes one record may take: a JSONL or text line without its
            newline, or one element of a JSON list.
    """

    max_records: int | None = None
    max_record_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self.max_record_bytes < 1:
            raise ValueError("max_record_bytes must be at least 1")


#: The limits when a caller names none: any number of records, each up to 64 MiB (far past any
#: context LLaMA-Factory trains with; the bound keeps one line of a broken file from filling
#: memory). The gateway checks uploads with its own, tighter limits.
DEFAULT_LIMITS: Final = DatasetLimits()


class DatasetFormat(StrEnum):
    """How a dataset's records are laid out (the contract's ``DatasetFormat``)."""

    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    PRETRAIN_TEXT = "pretrain_text"
    OPENAI_CHAT = "openai_chat"
    OPENAI_PREFERENCE = "openai_preference"

    @property
    def openai(self) -> bool:
        """OpenAI's JSONL layouts, which LLaMA-Factory reads only once prepared."""
        return self in (DatasetFormat.OPENAI_CHAT, DatasetFormat.OPENAI_PREFERENCE)


class DatasetSpec(BaseModel):
    """One dataset of a job: its file, layout and column/tag mapping."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME.pattern)
    path: Path
    format: DatasetFormat
    ranking: bool = False
    columns: DatasetColumns = DatasetColumns()
    tags: DatasetTags = DatasetTags()
    num_samples: int | None = Field(None, ge=1)

    def info_entry(self, file_name: str) -> DatasetInfoEntry:
        """This dataset's ``dataset_info.json`` entry for a copy named ``file_name``.

        Raises:
            InvalidArgument: an OpenAI layout, which :func:`prepare_for_llamafactory` rewrites
                first.
        """
        if self.format.openai:
            raise InvalidArgument(
                f"dataset '{self.name}' is in {self.format.value} layout: prepare it with "
                "prepare_for_llamafactory before writing dataset_info.json",
                field=f"datasets[{self.name}]",
            )
        columns = self.columns
        sharegpt = self.format is DatasetFormat.SHAREGPT
        if self.format is DatasetFormat.PRETRAIN_TEXT:
            if columns.prompt is None:
                # LLaMA-Factory reads a .txt file into a ``text`` column; JSON records use it too.
                columns = columns.model_copy(update={"prompt": "text"})
        elif columns != DatasetColumns() or self.ranking:
            # LLaMA-Factory reads every column of a ``columns`` mapping, unset ones as None (not
            # as its defaults): one mapped column (a kto_tag) would lose the conversation, and
            # preference pairs have no default at all. Spell out the names these rules check.
            defaults = {"messages": "conversations"} if sharegpt else {"prompt": "instruction"}
            if not sharegpt:
                defaults["query"] = "input"
            if self.ranking:
                defaults |= {"chosen": "chosen", "rejected": "rejected"}
            elif not sharegpt:
                defaults["response"] = "output"
            unset = {key: name for key, name in defaults.items() if getattr(columns, key) is None}
            columns = columns.model_copy(update=unset)
        return DatasetInfoEntry(
            file_name=file_name,
            formatting="sharegpt" if sharegpt else "alpaca",
            ranking=self.ranking,
            num_samples=self.num_samples,
            columns=columns if columns != DatasetColumns() else None,
            tags=self.tags if sharegpt and self.tags != DatasetTags() else None,
        )


class InvalidDataset(InvalidArgument):
    """A dataset file has bad records; ``problems`` lists them ("record 17: ...")."""

    #: The contract's ``OperationError.code`` for a job that fails this way.
    error_code: ClassVar[str] = "invalid_dataset"

    def __init__(self, name: str, problems: list[str], total: int) -> None:
        more = f"\n... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(
            f"dataset '{name}' has {total} bad record(s):\n" + "\n".join(problems) + more,
            field=f"datasets[{name}]",
        )
        self.problems = problems
        self.total = total


class DatasetTooLarge(InvalidDataset):
    """A dataset file past one of its :class:`DatasetLimits`; checking stopped there.

    ``limit`` names the limit (``"max_records"`` or ``"max_record_bytes"``), ``value`` its value,
    and ``problems`` holds the one problem ("line 7: longer than 4194304 bytes, ...").
    """

    def __init__(
        self,
        name: str,
        problem: str,
        *,
        limit: Literal["max_records", "max_record_bytes"],
        value: int,
    ) -> None:
        super().__init__(name, [problem], 1)
        self.message = f"dataset '{name}' is larger than checking allows: {problem}"
        self.args = (self.message,)
        self.limit = limit
        self.value = value


def validate_dataset(spec: DatasetSpec, limits: DatasetLimits = DEFAULT_LIMITS) -> int:
    """Check every record of ``spec``'s file; the number of records.

    The file is read as a stream, one record at a time, within `limits`.

    Raises:
        InvalidDataset: some records are malformed (up to :data:`MAX_REPORTED` listed).
        DatasetTooLarge: the file is past one of `limits` (checking stops there).
    """
    problems: list[str] = []
    total_bad = 0
    count = 0
    for label, record in _records(spec, limits):
        count += 1
        found = list(_check_record(spec, record))
        if found:
            total_bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{label}: {'; '.join(found)}")
    if count == 0:
        raise InvalidDataset(spec.name, ["the file holds no records"], 1)
    if problems:
        raise InvalidDataset(spec.name, problems, total_bad)
    return count


def write_dataset_info(directory: Path, specs: list[DatasetSpec]) -> Path:
    """Copy each dataset's file into ``directory`` and write the ``dataset_info.json`` naming
    them; returns that file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    entries: dict[str, DatasetInfoEntry] = {}
    for spec in specs:
        if spec.name in entries:
            raise InvalidArgument(f"two datasets are named '{spec.name}'", field="datasets")
        file_name = f"{spec.name}{spec.path.suffix}"
        shutil.copyfile(spec.path, directory / file_name)
        entries[spec.name] = spec.info_entry(file_name)
    info = directory / "dataset_info.json"
    info.write_text(DatasetInfo(entries).to_json(), encoding="utf-8")
    return info


# --- reading ---------------------------------------------------------------------------------
#
# Files are read as a stream, never whole: a JSONL or text file one line at a time (a line at most
# ``max_record_bytes`` long), a JSON list one element at a time (`_JsonList`). Memory then stays
# near one record whatever the file's size, which matters where uploads are checked (the gateway
# takes files of hundreds of MB from its callers).


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


# --- checking ----------------------------------------------------------------------------------


def _check_record(spec: DatasetSpec, record: Any) -> Iterator[str]:
    if isinstance(record, _Unreadable):
        yield record.reason
        return
    if not isinstance(record, dict):
        yield f"must be a JSON object, not {type(record).__name__}"
        return
    if spec.format is DatasetFormat.PRETRAIN_TEXT:
        yield from _text_field(record, spec.columns.prompt or "text")
    elif spec.format is DatasetFormat.ALPACA:
        yield from _check_alpaca(spec, record)
    elif spec.format is DatasetFormat.OPENAI_CHAT:
        yield from _check_openai_chat(record)
    elif spec.format is DatasetFormat.OPENAI_PREFERENCE:
        yield from _check_openai_preference(record)
    else:
        yield from _check_sharegpt(spec, record)
    if spec.columns.kto_tag is not None:
        tag = spec.columns.kto_tag
        if not isinstance(record.get(tag), bool):
            yield f"'{tag}' must be true or false"


def _text_field(record: Mapping[str, Any], field: str, *, optional: bool = False) -> Iterator[str]:
    if field not in record or record[field] is None:
        if not optional:
            yield f"'{field}' is missing"
        return
    value = record[field]
    if not isinstance(value, str):
        yield f"'{field}' must be text, not {type(value).__name__}"
    elif not optional and not value.strip():
        yield f"'{field}' is empty"


def _check_alpaca(spec: DatasetSpec, record: Mapping[str, Any]) -> Iterator[str]:
    columns = spec.columns
    yield from _text_field(record, columns.prompt or "instruction")
    yield from _text_field(record, columns.query or "input", optional=True)
    yield from _text_field(record, columns.system or "system", optional=True)
    if spec.ranking:
        yield from _text_field(record, columns.chosen or "chosen")
        yield from _text_field(record, columns.rejected or "rejected")
    else:
        yield from _text_field(record, columns.response or "output")
    history = columns.history or "history"
    if record.get(history) is not None:
        turns = record[history]
        if not isinstance(turns, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
            for turn in turns
        ):
            yield f"'{history}' must be a list of [instruction, response] pairs of text"


def _check_sharegpt(spec: DatasetSpec, record: Mapping[str, Any]) -> Iterator[str]:
    columns, tags = spec.columns, spec.tags
    field = columns.messages or "conversations"
    role_tag, content_tag = tags.role_tag or "from", tags.content_tag or "value"
    user, assistant = tags.user_tag or "human", tags.assistant_tag or "gpt"
    observation = tags.observation_tag or "observation"
    function = tags.function_tag or "function_call"
    system = tags.system_tag or "system"
    yield from _text_field(record, columns.system or "system", optional=True)
    yield from _check_tools(record, columns.tools or "tools")
    messages = record.get(field)
    if messages is None:
        yield f"'{field}' is missing"
        return
    if not isinstance(messages, list) or not messages:
        yield f"'{field}' must be a non-empty list of messages"
        return
    odd, even = (user, observation), (assistant, function)
    start = 1 if isinstance(messages[0], dict) and messages[0].get(role_tag) == system else 0
    for index, message in enumerate(messages):
        where = f"'{field}'[{index}]"
        if not isinstance(message, dict):
            yield f"{where} must be an object with '{role_tag}' and '{content_tag}'"
            continue
        role, content = message.get(role_tag), message.get(content_tag)
        if role is None:
            yield f"{where}: '{role_tag}' is missing"
            continue
        if not isinstance(content, str):
            yield f"{where}: '{content_tag}' is missing or not text"
        if index < start:
            continue
        expected = odd if (index - start) % 2 == 0 else even
        if role not in expected:
            allowed = " or ".join(map(repr, expected))
            yield f"{where}: '{role_tag}' is {role!r} but {allowed} must come here"
        elif role == function and isinstance(content, str):
            yield from _check_function_call(where, content_tag, content)
    turns = len(messages) - start
    if spec.ranking:
        if turns % 2 == 0:
            yield f"'{field}' must end with a '{user}' turn before the chosen/rejected answers"
        for key in (columns.chosen or "chosen", columns.rejected or "rejected"):
            answer = record.get(key)
            if not isinstance(answer, dict) or not isinstance(answer.get(content_tag), str):
                yield f"'{key}' must be a message with '{role_tag}' and '{content_tag}'"
            elif answer.get(role_tag) not in even:
                yield f"'{key}': '{role_tag}' must be {assistant!r} or {function!r}"
    elif turns % 2 != 0:
        yield f"'{field}' must end with a {assistant!r} or {function!r} turn"


def _check_tools(record: Mapping[str, Any], field: str) -> Iterator[str]:
    tools = record.get(field)
    if tools is None or tools == "":
        return
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            yield f"'{field}' must be a JSON list of tool definitions"
            return
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        yield f"'{field}' must be a JSON list of tool definitions"


def _check_function_call(where: str, content_tag: str, content: str) -> Iterator[str]:
    problem = (
        f"{where}: '{content_tag}' of a function call must be JSON with 'name' and 'arguments'"
    )
    try:
        call = json.loads(content)
    except json.JSONDecodeError:
        yield problem
        return
    calls = call if isinstance(call, list) else [call]
    if not all(isinstance(c, dict) and "name" in c and "arguments" in c for c in calls):
        yield problem


# --- OpenAI's layouts: checking -----------------------------------------------------------------

_ROLES: Final = ("system", "user", "assistant", "tool")


def _check_openai_chat(record: Mapping[str, Any]) -> Iterator[str]:
    yield from _check_openai_tools(record.get("tools"), "tools")
    messages = record.get("messages")
    found = list(_check_messages(messages, "messages"))
    if found:
        yield from found
        return
    assert isinstance(messages, list)
    trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and _weight(m)]
    if not trained:
        yield (
            "messages: needs at least one assistant message with weight 1 (the answers to learn)"
            if any(m["role"] == "assistant" for m in messages)
            else "messages: needs at least one assistant message (the answers to learn)"
        )
        return
    yield from _check_order(messages, "messages")
    for index, message in enumerate(messages[: trained[-1]]):
        if message["role"] == "assistant" and not _weight(message):
            # LLaMA-Factory learns every assistant turn it is given; only trailing turns can be
            # left out, so an untrained answer in the middle cannot be honoured.
            yield (
                f"messages[{index}].weight: 0 is only supported after the last assistant message "
                "with weight 1 (split the conversation, or give it weight 1)"
            )


def _check_openai_preference(record: Mapping[str, Any]) -> Iterator[str]:
    given = record.get("input")
    if not isinstance(given, dict):
        yield "input: must be an object with 'messages'" if given else "input: is missing"
    else:
        yield from _check_openai_tools(given.get("tools"), "input.tools")
        messages = given.get("messages")
        found = list(_check_messages(messages, "input.messages"))
        yield from found
        if not found:
            assert isinstance(messages, list)
            yield from _check_order(messages, "input.messages")
            if messages[-1]["role"] not in ("user", "tool"):
                yield (
                    f"input.messages[{len(messages) - 1}].role: the input must end with a user "
                    "or tool message, which the preferred and non-preferred outputs answer"
                )
    for key in ("preferred_output", "non_preferred_output"):
        output = record.get(key)
        if output is None:
            yield f"{key}: is missing"
        elif not isinstance(output, list) or len(output) != 1:
            yield f"{key}: must be a list holding exactly one assistant message"
        else:
            found = list(_check_message(output[0], f"{key}[0]"))
            yield from found
            if not found and output[0]["role"] != "assistant":
                yield f"{key}[0].role: must be 'assistant' (got {output[0]['role']!r})"


def _check_messages(messages: Any, where: str) -> Iterator[str]:
    if messages is None:
        yield f"{where}: is missing"
    elif not isinstance(messages, list) or not messages:
        yield f"{where}: must be a non-empty list of messages"
    else:
        for index, message in enumerate(messages):
            yield from _check_message(message, f"{where}[{index}]")


def _check_message(message: Any, where: str) -> Iterator[str]:
    if not isinstance(message, dict):
        yield f"{where}: must be an object with 'role' and 'content'"
        return
    role = message.get("role")
    if role is None:
        yield f"{where}.role: is missing"
        return
    if role not in _ROLES:
        yield f"{where}.role: must be one of {', '.join(_ROLES)} (got {role!r})"
        return
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            yield f"{where}.tool_calls: only assistant messages call tools"
        else:
            yield from _check_tool_calls(calls, f"{where}.tool_calls")
    content = message.get("content")
    if content is None:
        if calls is None:
            yield f"{where}.content: is missing"
    elif _text(content) is None:
        yield f"{where}.content: must be text or a list of text parts"
    elif calls is None and not _text(content) and role in ("user", "assistant"):
        yield f"{where}.content: is empty"
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            yield f"{where}.weight: only assistant messages have a weight"
        elif type(weight) is not int or weight not in (0, 1):
            yield f"{where}.weight: must be 0 or 1 (got {weight!r})"
    if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
        yield f"{where}.tool_call_id: must be text"


def _check_tool_calls(calls: Any, where: str) -> Iterator[str]:
    if not isinstance(calls, list) or not calls:
        yield f"{where}: must be a non-empty list of tool calls"
        return
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        if not isinstance(call, dict):
            yield f"{at}: must be an object with 'type' and 'function'"
            continue
        if call.get("type", "function") != "function":
            yield f"{at}.type: must be 'function' (got {call.get('type')!r})"
        function = call.get("function")
        if not isinstance(function, dict):
            yield f"{at}.function: must be an object with 'name' and 'arguments'"
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            yield f"{at}.function.name: must be a non-empty string"
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            yield f"{at}.function.arguments: must be a string holding a JSON object"
            continue
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            yield f"{at}.function.arguments: must be a string holding a JSON object"


def _check_openai_tools(tools: Any, where: str) -> Iterator[str]:
    if tools is None:
        return
    if not isinstance(tools, list):
        yield f"{where}: must be a list of tools"
        return
    for index, tool in enumerate(tools):
        at = f"{where}[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            yield f"{at}.type: must be 'function'"
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            yield f"{at}.function.name: is missing"


def _check_order(messages: list[dict[str, Any]], where: str) -> Iterator[str]:
    """The order LLaMA-Factory can learn from: user (or tool results) and assistant turns taking
    turns after an optional leading system message; consecutive user messages merge."""
    previous: dict[str, Any] | None = None
    for index, message in enumerate(messages):
        at = f"{where}[{index}].role"
        role = message["role"]
        if role == "system":
            if index != 0:
                yield f"{at}: a system message may only come first"
        elif previous is None or previous["role"] == "system":
            if role != "user":
                yield f"{at}: the conversation must start with a user message (got {role!r})"
                return
        elif role == "tool":
            if previous["role"] != "tool" and not (
                previous["role"] == "assistant" and previous.get("tool_calls")
            ):
                yield f"{at}: a tool message must follow an assistant message with tool_calls"
        elif role == "user" and previous["role"] == "tool":
            yield f"{at}: the assistant must answer the tool results before the next user message"
        elif role == "assistant" and previous["role"] == "assistant":
            yield f"{at}: two assistant messages in a row; a user or tool message goes between"
        previous = message


def _text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of text parts joined; None if neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def _weight(message: Mapping[str, Any]) -> bool:
    return bool(message.get("weight", 1))


# --- OpenAI's layouts: rewriting as sharegpt ---------------------------------------------------

#: How prepared OpenAI data names its columns and roles for LLaMA-Factory's sharegpt reader.
OPENAI_SHAREGPT_TAGS: Final = DatasetTags(
    role_tag="role",
    content_tag="content",
    user_tag="user",
    assistant_tag="assistant",
    observation_tag="observation",
    function_tag="function_call",
    system_tag="system",
)


def _turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages as sharegpt turns: tool calls become function_call turns (arguments as
    objects, as LLaMA-Factory's function formatter expects), tool results observation turns, and
    consecutive user or tool messages one turn."""
    turns: list[dict[str, str]] = []
    for message in messages:
        role, calls = message["role"], message.get("tool_calls")
        if calls:
            # Text an assistant writes beside its tool calls has no place in a function_call
            # turn; the calls are what is learned.
            role = "function_call"
            text = json.dumps(
                [
                    {
                        "name": call["function"]["name"],
                        "arguments": json.loads(call["function"]["arguments"]),
                    }
                    for call in calls
                ],
                ensure_ascii=False,
            )
        else:
            role = "observation" if role == "tool" else role
            text = _text(message.get("content")) or ""
        if turns and role in ("user", "observation") and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})
    return turns


def _tools_text(tools: Any) -> str | None:
    return json.dumps(tools, ensure_ascii=False) if tools else None


def _sharegpt_chat(record: Mapping[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and _weight(m))
    converted: dict[str, Any] = {"messages": _turns(messages[: last + 1])}
    tools = _tools_text(record.get("tools"))
    if tools is not None:
        converted["tools"] = tools
    return converted


def _sharegpt_preference(record: Mapping[str, Any]) -> dict[str, Any]:
    given: Mapping[str, Any] = record["input"]
    converted: dict[str, Any] = {
        "messages": _turns(given["messages"]),
        "chosen": _turns(record["preferred_output"])[0],
        "rejected": _turns(record["non_preferred_output"])[0],
    }
    tools = _tools_text(given.get("tools"))
    if tools is not None:
        converted["tools"] = tools
    return converted


def prepare_for_llamafactory(spec: DatasetSpec, directory: Path) -> DatasetSpec:
    """A spec of the same data that LLaMA-Factory reads.

    Alpaca, sharegpt and pre-training text come back unchanged. OpenAI chat data becomes
    sharegpt (``messages`` of ``role``/``content`` turns): the file is used as it is when every
    line already is such a conversation, else rewritten into ``directory`` (tool calls as
    function_call turns, tool results as observation turns, trailing weight-0 answers dropped,
    tools as a JSON string). OpenAI preference data is always rewritten into ``directory`` as a
    sharegpt ranking file (``chosen``/``rejected``).

    The records must be valid (:func:`validate_dataset`); the result validates too.
    """
    if not spec.format.openai:
        return spec
    preference = spec.format is DatasetFormat.OPENAI_PREFERENCE
    convert = _sharegpt_preference if preference else _sharegpt_chat
    as_is, tools = not preference, False
    for _, record in _records(spec):
        converted = convert(record)
        as_is = as_is and converted == record
        tools = tools or "tools" in converted
    columns = DatasetColumns(
        messages="messages",
        tools="tools" if tools else None,
        chosen="chosen" if preference else None,
        rejected="rejected" if preference else None,
    )
    prepared = DatasetSpec(
        name=spec.name,
        path=spec.path,
        format=DatasetFormat.SHAREGPT,
        ranking=preference,
        columns=columns,
        tags=OPENAI_SHAREGPT_TAGS,
        num_samples=spec.num_samples,
    )
    if as_is:
        return prepared
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{spec.name}.jsonl"
    with target.open("w", encoding="utf-8") as out:
        for _, record in _records(spec):
            converted = convert(record)
            if tools:
                # One column type for every row: datasets infers it from the records.
                converted.setdefault("tools", "")
            out.write(json.dumps(converted, ensure_ascii=False) + "\n")
    return prepared.model_copy(update={"path": target})


# --- telling an uploaded file's layout ---------------------------------------------------------

#: The layouts an upload may have, as :func:`detect_dataset` lists them when it finds none.
ACCEPTED_LAYOUTS: Final = (
    'OpenAI chat JSONL: {"messages": [{"role": ..., "content": ...}, ...]} per line',
    'OpenAI preference JSONL: {"input": {"messages": [...]}, "preferred_output": [...], '
    '"non_preferred_output": [...]} per line',
    'alpaca JSON or JSONL: {"instruction", "input", "output"} records '
    '(preference: "chosen" and "rejected" instead of "output")',
    'sharegpt JSON or JSONL: {"conversations": [{"from": ..., "value": ...}, ...]} records '
    '(preference: with "chosen" and "rejected")',
    'pre-training text JSON or JSONL: {"text": ...} records',
    'KTO: any of the chat layouts above with a boolean "kto_tag" in each record (true: a '
    "desirable answer)",
)

#: The record keys that name a chat layout; a record with none of them but "text" is pre-training
#: text.
_CHAT_KEYS: Final = frozenset({"messages", "conversations", "instruction", "input"})
#: The field LLaMA-Factory's KTO datasets label each answer with (its data/README's name).
KTO_TAG: Final = "kto_tag"


def detect_dataset(
    path: Path, name: str = "dataset", limits: DatasetLimits = DEFAULT_LIMITS
) -> DatasetSpec:
    """The spec of an uploaded file, from its suffix and first record (not yet validated).

    Only a prefix of the file is read: up to :data:`DETECT_LEAD_BYTES` of blank space, then the
    first record, at most ``limits.max_record_bytes`` of it.

    Raises:
        InvalidDataset: the file is unreadable or in none of :data:`ACCEPTED_LAYOUTS`.
        DatasetTooLarge: the first record is longer than ``limits.max_record_bytes``.
    """
    first = _first_record(path, name, limits)
    keys = set(first) if isinstance(first, dict) else set()
    jsonl = path.suffix.lower() == ".jsonl"
    ranking = {"chosen", "rejected"} <= keys
    kto_tag = KTO_TAG if KTO_TAG in keys else None
    if "text" in keys and not keys & _CHAT_KEYS:
        return DatasetSpec(name=name, path=path, format=DatasetFormat.PRETRAIN_TEXT)
    # Alpaca records have an "input" too: only the outputs tell OpenAI's preference layout.
    if jsonl and {"preferred_output", "non_preferred_output"} & keys:
        return DatasetSpec(name=name, path=path, format=DatasetFormat.OPENAI_PREFERENCE)
    messages = first.get("messages") if isinstance(first, dict) else None
    # OpenAI's chat layout has no label: labelled (KTO) records are read as sharegpt below,
    # which keeps the tag column (preparing OpenAI chat data for LLaMA-Factory would drop it).
    openai_chat = isinstance(messages, list) and _looks_openai(messages)
    if jsonl and openai_chat and not ranking and kto_tag is None:
        return DatasetSpec(name=name, path=path, format=DatasetFormat.OPENAI_CHAT)
    if "conversations" in keys or "messages" in keys:
        column = "conversations" if "conversations" in keys else "messages"
        turns = first[column]
        role_content = isinstance(turns, list) and _looks_openai(turns)
        return DatasetSpec(
            name=name,
            path=path,
            format=DatasetFormat.SHAREGPT,
            ranking=ranking,
            columns=DatasetColumns(
                messages=None if column == "conversations" else column,
                chosen="chosen" if ranking else None,
                rejected="rejected" if ranking else None,
                kto_tag=kto_tag,
            ),
            tags=OPENAI_SHAREGPT_TAGS if role_content else DatasetTags(),
        )
    if "instruction" in keys:
        return DatasetSpec(
            name=name,
            path=path,
            format=DatasetFormat.ALPACA,
            ranking=ranking,
            columns=DatasetColumns(kto_tag=kto_tag),
        )
    shown = ", ".join(sorted(keys)[:8]) or type(first).__name__
    raise InvalidDataset(
        name,
        [
            f"record 1 ({shown}) is in no layout the Files API accepts; use one of:\n- "
            + "\n- ".join(ACCEPTED_LAYOUTS)
        ],
        1,
    )


def detect_format(path: Path, limits: DatasetLimits = DEFAULT_LIMITS) -> DatasetFormat:
    """The layout of an uploaded file (see :func:`detect_dataset`, which also says whether it
    holds preference pairs and how its columns are named, and how much of the file it reads)."""
    return detect_dataset(path, limits=limits).format


def _looks_openai(messages: list[Any]) -> bool:
    return bool(messages) and isinstance(messages[0], dict) and "role" in messages[0]


def _first_record(path: Path, name: str, limits: DatasetLimits) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise InvalidDataset(
            name, [f"unsupported file type '{suffix}': upload .jsonl (or alpaca/sharegpt .json)"], 1
        )
    with path.open("rb") as source:
        if suffix == ".json":
            for record in _JsonList(source, name, limits.max_record_bytes, DETECT_LEAD_BYTES):
                return record
            raise InvalidDataset(name, ["the file holds no records"], 1)
        number, line = _first_line(source, name, limits.max_record_bytes)
    record = _parsed(line)
    if isinstance(record, _Unreadable):
        raise InvalidDataset(name, [f"line {number}: {record.reason}"], 1)
    return record


def _first_line(source: BinaryIO, name: str, max_bytes: int) -> tuple[int, bytes]:
    """The first non-blank line of a JSONL file and its number; blank lines before it may take
    :data:`DETECT_LEAD_BYTES` at most, and nothing after it is read."""
    blank = 0
    for number, line in _lines(source, name, max_bytes):
        if line.strip():
            return number, line
        blank += len(line)
        if blank > DETECT_LEAD_BYTES:
            break
    else:
        raise InvalidDataset(name, ["the file holds no records"], 1)
    raise InvalidDataset(
        name, [f"no record starts in the first {DETECT_LEAD_BYTES} bytes of the file"], 1
    )
