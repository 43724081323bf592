"""LLaMA-Factory's ``dataset_info.json``, typed: one entry per dataset (:class:`DatasetInfoEntry`),
its column and role-tag mappings (:class:`DatasetColumns`, :class:`DatasetTags`) and the whole
file (:class:`DatasetInfo`).

Whoever writes that file (the trainer, a test, the demo datasets' entries) builds it from these
models rather than by hand, so a field LLaMA-Factory does not know cannot slip in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

__all__ = ["DatasetColumns", "DatasetInfo", "DatasetInfoEntry", "DatasetTags"]


class DatasetColumns(BaseModel):
    """Which record field holds what (LLaMA-Factory's ``columns``); unset means its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


class DatasetTags(BaseModel):
    """How sharegpt messages name their roles (LLaMA-Factory's ``tags``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None


class DatasetInfoEntry(BaseModel):
    """One local-file entry of LLaMA-Factory's ``dataset_info.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file_name: str
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str | None = None
    folder: str | None = None
    num_samples: int | None = Field(None, ge=1)
    columns: DatasetColumns | None = None
    tags: DatasetTags | None = None


class DatasetInfo(RootModel[dict[str, DatasetInfoEntry]]):
    """A whole ``dataset_info.json``: dataset name to entry."""

    def to_json(self) -> str:
        """The file's text, leaving out every unset field so LLaMA-Factory's defaults apply."""
        return self.model_dump_json(exclude_none=True, indent=2) + "\n"
