"""What a dataset is and how checking it can fail: its layout (:class:`DatasetFormat`), a job's
description of one file (:class:`DatasetSpec`), the bounds on reading it (:class:`DatasetLimits`)
and the errors that name its bad records (:class:`InvalidDataset`, :class:`DatasetTooLarge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_kit.errors import InvalidArgument

from .dataset_info import DatasetColumns, DatasetInfoEntry, DatasetTags

__all__ = [
    "DEFAULT_LIMITS",
    "DatasetFormat",
    "DatasetLimits",
    "DatasetSpec",
    "DatasetTooLarge",
    "InvalidDataset",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


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
