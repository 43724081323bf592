"""Files API bodies, shaped like OpenAI's (``openai.types.FileObject``, ``FileDeleted``, the
cursor page of ``files.list``), plus Forgeline's own fields on a file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["FileDeleted", "FileList", "FileObject", "RegistryLocation"]


class RegistryLocation(BaseModel):
    """Where the file's bytes are kept: one artifact of a registry dataset version."""

    model: str = Field(description="The registry model, `files/<file id>`.")
    version: int
    path: str = Field(description="The artifact's path inside the version.")


class FileObject(BaseModel):
    """An uploaded file."""

    object: Literal["file"] = "file"
    id: str
    bytes: int = Field(description="Size of the file in bytes.")
    created_at: int = Field(description="Unix time (seconds) of the upload.")
    filename: str
    purpose: str = Field(description="`fine-tune` or `evals` on this gateway.")
    status: Literal["uploaded", "processed", "error"] = Field(
        "processed", description="Always `processed`: a file is checked whole before it is kept."
    )
    expires_at: int | None = None
    status_details: str | None = None
    format: str = Field(
        description="Forgeline: the layout detected at upload: `openai_chat`, "
        "`openai_preference`, `alpaca` or `sharegpt`; `eval_rows` for purpose `evals`."
    )
    preference: bool = Field(
        description="Forgeline: the records are preference pairs (chosen and rejected answers)."
    )
    records: int | None = Field(
        None,
        description="Forgeline: how many records (examples, or eval rows) the file holds, "
        'which sizes a job\'s "auto" hyperparameters; null for a file uploaded before counts '
        "were kept.",
    )
    registry: RegistryLocation = Field(description="Forgeline: where the bytes are kept.")


class FileList(BaseModel):
    """A page of files; the next page starts `after` the `last_id`."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class PreviewSegment(BaseModel):
    """A run of the text the model sees, and whether the loss is computed on it."""

    text: str
    trained: bool


class RecordPreview(BaseModel):
    """One record rendered through the chat template, or why it cannot be."""

    index: int = Field(description="The record's position in the file, from 0.")
    segments: list[PreviewSegment]
    problem: str | None = None


class FilePreview(BaseModel):
    """Forgeline: the first records of a fine-tuning file as the model will be trained on them."""

    object: Literal["file.preview"] = "file.preview"
    file_id: str
    model: str = Field(description="The registry version whose chat template rendered them.")
    train_on_prompt: bool
    mask_history: bool
    data: list[RecordPreview]
