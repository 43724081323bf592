"""Check dataset files record by record, and write LLaMA-Factory's ``dataset_info.json``.

Shared because the gateway checks uploads (the Files API) with the same rules the trainer applies
before training.

Users hand the trainer data files and say how they are laid out (:class:`DatasetSpec`); the
trainer checks every record before any GPU time is spent — errors name the record (1 is the
first) and the field, "record 17: 'output' is missing" — and then writes the
``dataset_info.json`` LLaMA-Factory reads. Users never write that file.

The rules follow LLaMA-Factory's converters (``llamafactory.data.converter``): alpaca records need
a prompt and a response (or chosen and rejected for preference data); sharegpt conversations
alternate user/observation and assistant/function_call turns after an optional system turn, end
with the assistant (or, for preference data, with the user before a chosen/rejected pair).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import DatasetColumns, DatasetInfo, DatasetInfoEntry, DatasetTags

__all__ = [
    "DatasetFormat",
    "DatasetSpec",
    "InvalidDataset",
    "validate_dataset",
    "write_dataset_info",
]

#: How many record errors one report lists; the rest are counted.
MAX_REPORTED: Final = 20

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class DatasetFormat(StrEnum):
    """How a dataset's records are laid out (the contract's ``DatasetFormat``)."""

    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    PRETRAIN_TEXT = "pretrain_text"


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
        """This dataset's ``dataset_info.json`` entry for a copy named ``file_name``."""
        columns = self.columns
        if self.format is DatasetFormat.PRETRAIN_TEXT and columns.prompt is None:
            # LLaMA-Factory reads a .txt file into a ``text`` column; JSON records use it too.
            columns = columns.model_copy(update={"prompt": "text"})
        sharegpt = self.format is DatasetFormat.SHAREGPT
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


def validate_dataset(spec: DatasetSpec) -> int:
    """Check every record of ``spec``'s file; the number of records.

    Raises:
        InvalidDataset: some records are malformed (up to :data:`MAX_REPORTED` listed).
    """
    problems: list[str] = []
    total_bad = 0
    count = 0
    for label, record in _records(spec):
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
        (directory / file_name).write_bytes(spec.path.read_bytes())
        entries[spec.name] = spec.info_entry(file_name)
    info = directory / "dataset_info.json"
    info.write_text(DatasetInfo(entries).to_json(), encoding="utf-8")
    return info


# --- reading ---------------------------------------------------------------------------------


def _records(spec: DatasetSpec) -> Iterator[tuple[str, Any]]:
    suffix = spec.path.suffix.lower()
    if suffix == ".txt":
        if spec.format is not DatasetFormat.PRETRAIN_TEXT:
            raise InvalidDataset(spec.name, ["a .txt file can only be pre-training text"], 1)
        for number, line in enumerate(spec.path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                yield f"line {number}", {"text": line}
    elif suffix == ".jsonl":
        for number, line in enumerate(spec.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"record {number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"record {number}", _Unreadable(f"not valid JSON ({error.msg})")
    elif suffix == ".json":
        try:
            data = json.loads(spec.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InvalidDataset(
                spec.name, [f"line {error.lineno}: not valid JSON ({error.msg})"], 1
            ) from error
        if not isinstance(data, list):
            raise InvalidDataset(spec.name, ["the file must hold a JSON list of records"], 1)
        for number, record in enumerate(data, 1):
            yield f"record {number}", record
    else:
        raise InvalidDataset(
            spec.name, [f"unsupported file type '{suffix}': use .json, .jsonl or .txt"], 1
        )


class _Unreadable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


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
