"""Handing datasets to LLaMA-Factory: OpenAI's layouts rewritten as sharegpt
(:func:`prepare_for_llamafactory`), then each file copied beside the ``dataset_info.json`` naming
it (:func:`write_dataset_info`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from forgeline_kit.errors import InvalidArgument

from .dataset_info import DatasetColumns, DatasetInfo, DatasetInfoEntry, DatasetTags
from .reading import _records
from .spec import DatasetFormat, DatasetSpec
from .validate import _text, _weight  # messages read as checking read them

__all__ = ["OPENAI_SHAREGPT_TAGS", "prepare_for_llamafactory", "write_dataset_info"]

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
