"""Serving the Files API: the multipart upload, read as it arrives with the size limit counted
on the way, and the conversions between the file service and OpenAI's shapes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import anyio
from python_multipart.exceptions import FormParserError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import StreamingResponse

from forgeline_gateway.api.files.protocol import (
    FileDeleted,
    FileList,
    FileObject,
    FilePreview,
    PreviewSegment,
    RecordPreview,
    RegistryLocation,
)
from forgeline_gateway.errors import PayloadTooLarge
from forgeline_gateway.files.blobs import RegistryFiles
from forgeline_gateway.files.preview import preview_records
from forgeline_gateway.files.service import (
    EvalRowsLayout,
    FileLayout,
    FileService,
    Upload,
    check_purpose,
    load_layout,
)
from forgeline_gateway.settings import GatewaySettings
from forgeline_gateway.store import FileRecord, Store
from forgeline_kit.datasets import DatasetLimits
from forgeline_kit.errors import InvalidArgument

__all__ = ["FileServing"]

#: Room for the multipart framing and the `purpose` field beyond the file itself.
FORM_OVERHEAD_BYTES: Final = 64 * 1024
_CHUNK: Final = 256 * 1024


class FileServing:
    """The Files API over a `FileService` (``service``, which fine-tuning also uses)."""

    def __init__(self, service: FileService, *, max_file_bytes: int) -> None:
        self.service = service
        self.max_file_bytes = max_file_bytes

    @classmethod
    def open(cls, settings: GatewaySettings, store: Store) -> FileServing:
        """The Files API of a gateway, with its own client of ``settings.registry_target``."""
        files = RegistryFiles(settings.registry_target, local_files=settings.registry_local_files)
        limits = DatasetLimits(
            max_records=settings.max_dataset_records,
            max_record_bytes=settings.max_dataset_record_bytes,
        )
        service = FileService(store, files, limits)
        return cls(service, max_file_bytes=settings.max_file_bytes)

    async def close(self) -> None:
        await self.service.close()

    async def create(self, request: Request) -> FileObject:
        """Store the file of a ``multipart/form-data`` upload (fields ``file``, ``purpose``)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidArgument(
                "Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                field="file",
            )
        parser = MultiPartParser(
            request.headers,
            self._limited(request.stream()),
            max_files=1,
            max_fields=8,
        )
        try:
            form = await parser.parse()
        except (MultiPartException, FormParserError) as error:
            reason = error.message if isinstance(error, MultiPartException) else str(error)
            raise InvalidArgument(
                f"The upload is not a valid multipart form: {reason}", field="file"
            ) from error
        scratch = Path(tempfile.mkdtemp(prefix="forgeline-upload-"))
        try:
            purpose, file = form.get("purpose"), form.get("file")
            if not isinstance(purpose, str):
                raise InvalidArgument("Missing required parameter: 'purpose'.", field="purpose")
            check_purpose(purpose)
            if not isinstance(file, UploadFile):
                raise InvalidArgument("Missing required parameter: 'file'.", field="file")
            if file.size is not None and file.size > self.max_file_bytes:
                raise self._too_large()
            filename = Path(file.filename or "upload.jsonl").name
            path = scratch / f"upload{Path(filename).suffix.lower()}"
            await anyio.to_thread.run_sync(_copy, file, path)
            record, layout = await self.service.create(Upload(filename, purpose, path))
        finally:
            await form.close()
            shutil.rmtree(scratch, ignore_errors=True)
        return _view(record, layout)

    async def list(
        self, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> FileList:
        records, more = await self.service.list(
            purpose=purpose, after=after, limit=limit, descending=order == "desc"
        )
        return FileList(
            data=[_view(r) for r in records],
            first_id=records[0].id if records else None,
            last_id=records[-1].id if records else None,
            has_more=more,
        )

    async def retrieve(self, file_id: str) -> FileObject:
        return _view(await self.service.get(file_id))

    async def content(self, file_id: str) -> StreamingResponse:
        """The file's bytes, streamed from a copy fetched from the registry (removed after)."""
        stack = AsyncExitStack()
        try:
            record, path = await stack.enter_async_context(self.service.content(file_id))
        except BaseException:
            await stack.aclose()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async with await anyio.open_file(path, "rb") as source:
                    while chunk := await source.read(_CHUNK):
                        yield chunk
            finally:
                await stack.aclose()

        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(record.bytes)},
            # Also closes the copy when the body is never iterated (the client left first).
            background=BackgroundTask(stack.aclose),
        )

    async def preview(
        self, file_id: str, *, model: str, limit: int, train_on_prompt: bool, mask_history: bool
    ) -> FilePreview:
        """The first `limit` records through `model`'s chat template, trained spans marked."""
        await self.service.get(file_id)  # an unknown file is a 404 before the registry is asked
        version, template = await self.service.registry.chat_template(model)
        if not template:
            raise InvalidArgument(
                f"no chat template is recorded for {version}: push the model with its "
                "tokenizer_config.json (its chat_template), or preview with another model",
                field="model",
            )
        records = await preview_records(
            self.service,
            file_id,
            template,
            limit=limit,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
        )
        return FilePreview(
            file_id=file_id,
            model=version,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
            data=[
                RecordPreview(
                    index=r.index,
                    segments=[PreviewSegment(text=s.text, trained=s.trained) for s in r.segments],
                    problem=r.problem,
                )
                for r in records
            ],
        )

    async def delete(self, file_id: str) -> FileDeleted:
        record = await self.service.delete(file_id)
        return FileDeleted(id=record.id, deleted=True)

    async def _limited(self, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        # Count as the body arrives: a too large upload is refused before it is all read.
        limit = self.max_file_bytes + FORM_OVERHEAD_BYTES
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            yield chunk

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The file is larger than the {self.max_file_bytes} bytes this gateway accepts.",
            field="file",
        )


def _copy(file: UploadFile, target: Path) -> None:
    file.file.seek(0)
    with target.open("wb") as out:
        shutil.copyfileobj(file.file, out, _CHUNK)


def _view(record: FileRecord, layout: FileLayout | EvalRowsLayout | None = None) -> FileObject:
    layout = layout or load_layout(record)
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        format=layout.format if isinstance(layout, EvalRowsLayout) else layout.format.value,
        preference=layout.preference,
        records=layout.rows if isinstance(layout, EvalRowsLayout) else layout.records,
        registry=RegistryLocation(model=record.model, version=record.version, path=record.path),
    )
