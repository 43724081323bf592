"""The Files API's domain logic: check an upload, keep its bytes in the registry and its record
in the gateway's store; list, read back and delete files; resolve a file id for fine-tuning.

An upload is checked whole before anything is stored (`forgeline_kit.datasets`, the trainer's own
rules, for purpose ``fine-tune``; `forgeline_gateway.evals.rows` for purpose ``evals``), so a
stored file always trains, or always feeds an eval run. The check reads the file as a stream, a
record at a time, in a worker thread (never on the event loop), within `DatasetLimits` the
gateway's settings give (``MAX_DATASET_RECORDS``, ``MAX_DATASET_RECORD_BYTES``). The registry
version is written before the record, and the record is deleted before the version is: a file
that is listed can always be read.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict

from forgeline_gateway.evals.rows import InvalidRows, RowsTooLarge, count_rows
from forgeline_gateway.files.blobs import RegistryFiles
from forgeline_gateway.settings import GatewaySettings
from forgeline_gateway.store import FileRecord, Store
from forgeline_kit.datasets import (
    DatasetFormat,
    DatasetLimits,
    DatasetSpec,
    DatasetTooLarge,
    InvalidDataset,
    detect_dataset,
    validate_dataset,
)
from forgeline_kit.errors import InvalidArgument, NotFound
from forgeline_kit.tinymodel import DatasetColumns, DatasetTags
from forgeline_proto.common.v1 import common_pb2

__all__ = [
    "EVALS",
    "FINE_TUNE",
    "PURPOSES",
    "EvalRowsLayout",
    "FileLayout",
    "FileService",
    "InvalidFile",
    "ResolvedFile",
    "Upload",
    "load_layout",
]

#: Fine-tuning data.
FINE_TUNE: Final = "fine-tune"
#: Rows of an eval data source (`forgeline_gateway.evals`).
EVALS: Final = "evals"
#: The purposes the gateway stores files for.
PURPOSES: Final = (FINE_TUNE, EVALS)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidFile(InvalidArgument):
    """An upload that is not valid data for its purpose (400, ``param: file``)."""

    openai_code: ClassVar[str] = "invalid_file"


class FileLayout(BaseModel):
    """How a stored file's records are laid out, as detected at upload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: DatasetFormat
    ranking: bool = False
    columns: DatasetColumns = DatasetColumns()
    tags: DatasetTags = DatasetTags()
    #: How many records the file holds (what "auto" hyperparameters are sized by); None for
    #: files uploaded before the count was kept.
    records: int | None = None

    @property
    def preference(self) -> bool:
        """The records are preference pairs (chosen and rejected answers)."""
        return self.ranking or self.format is DatasetFormat.OPENAI_PREFERENCE

    @classmethod
    def of(cls, spec: DatasetSpec, records: int | None = None) -> FileLayout:
        return cls(
            format=spec.format,
            ranking=spec.ranking,
            columns=spec.columns,
            tags=spec.tags,
            records=records,
        )


class EvalRowsLayout(BaseModel):
    """A file of purpose ``evals``: JSONL rows ``{"item": {...}, "sample": {...}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["eval_rows"] = "eval_rows"
    rows: int
    #: How many rows give a ``sample`` (the answer graded, for runs without a model).
    samples: int = 0

    @property
    def preference(self) -> bool:
        return False


def load_layout(record: FileRecord) -> FileLayout | EvalRowsLayout:
    """The layout stored with `record`."""
    if record.purpose == EVALS:
        return EvalRowsLayout.model_validate_json(record.layout_json)
    return FileLayout.model_validate_json(record.layout_json)


@dataclass(frozen=True)
class ResolvedFile:
    """A stored file as fine-tuning uses it: where it is in the registry and its layout."""

    id: str
    filename: str
    ref: common_pb2.ArtifactRef
    layout: FileLayout

    @property
    def format(self) -> DatasetFormat:
        return self.layout.format

    def dataset_spec(self, name: str, path: Path) -> DatasetSpec:
        """The kit's spec of this file once downloaded to `path` (prepare it for LLaMA-Factory
        with `forgeline_kit.datasets.prepare_for_llamafactory`)."""
        return DatasetSpec(
            name=name,
            path=path,
            format=self.layout.format,
            ranking=self.layout.ranking,
            columns=self.layout.columns,
            tags=self.layout.tags,
        )


@dataclass(frozen=True)
class Upload:
    """An uploaded file, already written to `path` on this host."""

    filename: str
    purpose: str
    path: Path


#: The settings that raise each of the kit's limits, by the limit's name.
_LIMIT_SETTINGS: Final = {
    "max_records": "max_dataset_records",
    "max_rows": "max_dataset_records",
    "max_record_bytes": "max_dataset_record_bytes",
    "max_line_bytes": "max_dataset_record_bytes",
}


class FileService:
    """Files over the gateway's store and the registry; uploads are checked within `limits`
    (the gateway's ``MAX_DATASET_RECORDS`` and ``MAX_DATASET_RECORD_BYTES``)."""

    def __init__(
        self, store: Store, registry: RegistryFiles, limits: DatasetLimits | None = None
    ) -> None:
        self.store = store
        self.registry = registry
        if limits is None:
            defaults = GatewaySettings.model_fields
            limits = DatasetLimits(
                max_records=defaults["max_dataset_records"].default,
                max_record_bytes=defaults["max_dataset_record_bytes"].default,
            )
        self.limits = limits

    async def close(self) -> None:
        await self.registry.close()

    async def create(self, upload: Upload) -> tuple[FileRecord, FileLayout | EvalRowsLayout]:
        """Check `upload` and store it.

        Raises:
            InvalidArgument: a purpose other than ``fine-tune`` or ``evals`` (``param: purpose``).
            InvalidFile: the file is in no accepted layout or has bad records; the message names
                the line and field of each (up to 20). Or the file is past the gateway's limits:
                more records than ``MAX_DATASET_RECORDS``, a record longer than
                ``MAX_DATASET_RECORD_BYTES``; the message names the setting.
            RegistryUnavailable: the registry cannot be reached (503); nothing is stored.
        """
        check_purpose(upload.purpose)
        # Time first, so files made within one second still list in the order they came.
        file_id = f"file-{time.time_ns():016x}{secrets.token_hex(4)}"
        with tempfile.TemporaryDirectory(prefix="forgeline-file-") as scratch:
            # The registry keeps the bytes under a safe name with the upload's suffix.
            directory = Path(scratch) / "version"
            directory.mkdir()
            staged = directory / _artifact_name(upload.filename)
            await asyncio.to_thread(shutil.move, upload.path, staged)
            layout: FileLayout | EvalRowsLayout
            shown: str
            # Checking reads the whole file: a worker thread's job, never the event loop's.
            if upload.purpose == EVALS:
                layout = await asyncio.to_thread(
                    _checked_rows, staged, upload.filename, self.limits
                )
                shown = layout.format
            else:
                spec, records = await asyncio.to_thread(
                    _checked, staged, upload.filename, self.limits
                )
                layout = FileLayout.of(spec, records)
                shown = spec.format.value
            ref = await self.registry.put(
                file_id,
                directory,
                {
                    "purpose": upload.purpose,
                    "format": shown,
                    "preference": str(layout.preference).lower(),
                    "filename": _CONTROL.sub("", upload.filename)[:256],
                },
            )
            record = FileRecord(
                id=file_id,
                filename=upload.filename,
                purpose=upload.purpose,
                bytes=staged.stat().st_size,
                created_at=int(time.time()),
                layout_json=layout.model_dump_json(),
                model=ref.version.model,
                version=ref.version.version,
                path=ref.path,
            )
        try:
            await self.store.run(lambda: self.store.add_file(record))
        except BaseException:
            await self.registry.delete(file_id)
            raise
        return record, layout

    async def get(self, file_id: str) -> FileRecord:
        """The record of `file_id`.

        Raises:
            NotFound: no such file (``param: file_id``).
        """
        record = await self.store.run(lambda: self.store.get_file(file_id))
        if record is None:
            raise NotFound(f"No such File object: {file_id}", field="file_id")
        return record

    async def list(
        self, *, purpose: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[FileRecord], bool]:
        """A page of files and whether more follow.

        Raises:
            InvalidArgument: `after` names no file.
        """
        cursor = None
        if after is not None:
            cursor = await self.store.run(lambda: self.store.get_file(after))
            if cursor is None:
                raise InvalidArgument(f"'after' names no file: {after}", field="after")
        rows = await self.store.run(
            lambda: self.store.list_files(
                purpose=purpose, after=cursor, limit=limit + 1, descending=descending
            )
        )
        return rows[:limit], len(rows) > limit

    @asynccontextmanager
    async def content(self, file_id: str) -> AsyncIterator[tuple[FileRecord, Path]]:
        """The file's bytes, downloaded from the registry to a temporary file that is removed
        when the context ends."""
        record = await self.get(file_id)
        with tempfile.TemporaryDirectory(prefix="forgeline-file-") as scratch:
            path = await self.registry.fetch(_ref(record), Path(scratch))
            yield record, path

    async def delete(self, file_id: str) -> FileRecord:
        """Delete the file's record, then its registry version.

        Raises:
            NotFound: no such file.
            RegistryUnavailable: the registry cannot be reached; the file stays listed.
        """
        record = await self.get(file_id)
        # The registry first: while it is down the file stays listed and can be deleted later.
        await self.registry.delete(file_id)
        await self.store.run(lambda: self.store.delete_file(file_id))
        return record

    async def resolve(self, file_id: str, *, param: str = "training_file") -> ResolvedFile:
        """Where the file `file_id` is in the registry, and its layout (for fine-tuning jobs).

        Raises:
            InvalidArgument: no such file, or not a fine-tuning file; names `param` (400).
        """
        record = await self.store.run(lambda: self.store.get_file(file_id))
        if record is None:
            raise InvalidArgument(
                f"Invalid file ID '{file_id}' for '{param}': no such file; upload it with "
                f"POST /v1/files (purpose '{FINE_TUNE}')",
                field=param,
            )
        if record.purpose != FINE_TUNE:
            raise InvalidArgument(
                f"File '{file_id}' has purpose '{record.purpose}', not '{FINE_TUNE}'", field=param
            )
        return ResolvedFile(
            id=record.id,
            filename=record.filename,
            ref=_ref(record),
            layout=FileLayout.model_validate_json(record.layout_json),
        )


def check_purpose(purpose: str) -> None:
    """Refuse every purpose but ``fine-tune`` and ``evals``.

    Raises:
        InvalidArgument: naming the accepted purposes (``param: purpose``).
    """
    if purpose not in PURPOSES:
        raise InvalidArgument(
            f"Invalid value for 'purpose': this gateway stores files for fine-tuning and evals "
            f"only; use '{FINE_TUNE}' or '{EVALS}' (got {purpose!r}).",
            field="purpose",
        )


def _artifact_name(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    stem = _SAFE_NAME.sub("-", Path(filename).stem).strip("-.")[:100]
    return f"{stem or 'data'}{suffix}"


def _checked(path: Path, filename: str, limits: DatasetLimits) -> tuple[DatasetSpec, int]:
    """Detect and validate the layout of `path`, and count its records; errors speak of the
    upload's name."""
    spec: DatasetSpec | None = None
    try:
        spec = detect_dataset(path, name="upload", limits=limits)
        records = validate_dataset(spec, limits)
    except DatasetTooLarge as error:
        raise _too_large(filename, "fine-tuning data", error.problems[0], error.limit) from error
    except InvalidDataset as error:
        more = error.total - len(error.problems)
        listed = "\n".join(error.problems) + (f"\n... and {more} more" if more > 0 else "")
        layout = f" (read as {spec.format.value})" if spec is not None else ""
        raise InvalidFile(
            f"'{filename}' is not valid fine-tuning data{layout}:\n{listed}", field="file"
        ) from error
    return spec, records


def _checked_rows(path: Path, filename: str, limits: DatasetLimits) -> EvalRowsLayout:
    """Check that every line of `path` is an eval data source row."""
    try:
        rows, samples = count_rows(
            path,
            max_rows=limits.max_records or sys.maxsize,
            max_line_bytes=limits.max_record_bytes,
        )
    except RowsTooLarge as error:
        raise _too_large(filename, "eval data", error.problems[0], error.limit) from error
    except InvalidRows as error:
        raise InvalidFile(
            f"'{filename}' is not valid eval data (one JSON object a line, "
            f'{{"item": {{...}}, "sample": {{...}}}}, the sample optional):\n{error.listed()}',
            field="file",
        ) from error
    return EvalRowsLayout(rows=rows, samples=samples)


def _too_large(filename: str, what: str, problem: str, limit: str) -> InvalidFile:
    """A file past one of the gateway's limits, naming the setting that raises it."""
    setting = GatewaySettings.env_var(_LIMIT_SETTINGS[limit])
    part = "file" if limit in ("max_records", "max_rows") else "record"
    return InvalidFile(
        f"'{filename}' is larger than this gateway checks as {what}: {problem}. Split the "
        f"{part}, or have the gateway's operator raise {setting}.",
        field="file",
    )


def _ref(record: FileRecord) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(
        version=common_pb2.VersionRef(model=record.model, version=record.version),
        path=record.path,
    )
