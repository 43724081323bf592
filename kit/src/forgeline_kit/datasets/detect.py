"""Telling an uploaded file's layout from its suffix and first record (:func:`detect_dataset`).

Only the file's start is read, so detection costs the same whatever the file's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Final

from .dataset_info import DatasetColumns, DatasetTags
from .reading import _JsonList, _lines, _parsed, _Unreadable
from .rewrite import OPENAI_SHAREGPT_TAGS
from .spec import DEFAULT_LIMITS, DatasetFormat, DatasetLimits, DatasetSpec, InvalidDataset

__all__ = ["ACCEPTED_LAYOUTS", "DETECT_LEAD_BYTES", "KTO_TAG", "detect_dataset", "detect_format"]

#: How much blank space may come before an uploaded file's first record when its layout is
#: detected: detection reads this and the first record, never more.
DETECT_LEAD_BYTES: Final = 64 * 1024

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
