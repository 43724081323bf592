"""The S3 driver, on the `minio` SDK: MinIO in compose, any S3-protocol store in general.

Records are objects written with S3 conditional writes (``If-None-Match: *`` to create,
``If-Match: <etag>`` to compare-and-swap), which MinIO and AWS S3 apply atomically.

A blob is stored in parts, each an object of its own: clients PUT them in parallel, straight to
the store, through presigned URLs under ``parts/sha256/<digest>/<upload id>/`` (one part for a
small blob). At commit the registry reads the parts back in order and hashes them, and only if
the bytes match their digest does it create ``blobs/sha256/<digest>``, a `BlobIndex` naming the
upload whose parts make up the blob, with ``If-None-Match: *``: a blob is published once and
never overwritten, and nothing unverified is ever at a blob's key. Downloads get one presigned
GET per part.

Parts rather than an S3 multipart upload, because S3 cannot read the parts of a multipart upload
before it is completed, and completing one makes the store copy or join every byte once more
(most of a 2 GiB push on the servers measured in benchmarks/registry_transfer.md), after which
the registry would still have to read the result back to verify it. Part grants carry
``If-None-Match: *`` so that a part, once arrived, is not overwritten by a resumed upload; a
client that drops the header can still replace a part until its grant expires, which every
reader's digest check then reports.

A blob key that holds bytes rather than an index was written by a registry from before blobs
were kept in parts (one object, the whole blob): it is read, verified and collected as a blob of
one part, so a bucket from an earlier release keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError
from pydantic import ValidationError

from forgeline_kit.errors import FailedPrecondition, Internal, Unavailable
from forgeline_registry.manifests import BlobIndex, BlobUploadState, dump, keys
from forgeline_registry.settings import RegistrySettings
from forgeline_registry.storage.base import (
    HASH_CHUNK_BYTES,
    BlobIncomplete,
    DownloadGrantSpec,
    HttpRequestSpec,
    ObjectNotFound,
    ObjectStore,
    PartSpec,
    PreconditionFailed,
    UploadedPart,
    UploadGrantSpec,
    hash_chunks,
    part_layout,
)

__all__ = ["S3Store"]

T = TypeVar("T")

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchUpload"})
#: A BlobIndex is a few hundred bytes: anything larger at a blob's key is the blob's bytes.
MAX_INDEX_BYTES = 4096
_ONE_SECOND = timedelta(seconds=1)
_UNAVAILABLE_CODES = frozenset(
    {"ServiceUnavailable", "SlowDown", "InternalError", "XMinioServerNotInitialized"}
)


def _http_client() -> urllib3.PoolManager:
    # minio's default retries an unreachable store for seconds per call; the registry answers
    # UNAVAILABLE promptly instead and lets its callers retry with backoff.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=120.0),
        maxsize=32,
        retries=urllib3.Retry(
            total=2, connect=1, backoff_factor=0.1, status_forcelist=[502, 503, 504]
        ),
    )


def _etag(response: Any) -> str:
    return str(response.headers.get("etag", "")).strip('"')


def _part_objects(
    digest: str, upload_id: str, size: int, part_size: int
) -> list[tuple[int, str, int, int]]:
    """(number, key, offset, size) of each part object of an upload of a blob."""
    return [
        (number, keys.blob_part(digest, upload_id, number), offset, length)
        for number, offset, length in part_layout(size, part_size)
    ]


class S3Store(ObjectStore):
    """Objects in one bucket of an S3-protocol store."""

    def __init__(
        self,
        endpoint: str,
        *,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        public_endpoint: str = "",
    ) -> None:
        self.bucket = bucket
        scheme = "https" if secure else "http"
        self.location = f"{scheme}://{endpoint}/{bucket}"
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(),
        )
        # Presigning is local computation; the region is given, so it makes no request.
        self._presigner = Minio(
            public_endpoint or endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
        )
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: RegistrySettings) -> S3Store:
        """The store `settings` describe."""
        return cls(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
        )

    def _unavailable(self, exc: BaseException) -> Unavailable:
        reason = type(exc).__name__
        if isinstance(exc, S3Error):
            reason = f"{exc.code}: {exc.message}"
        elif isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            reason = type(exc.reason).__name__
        return Unavailable(
            f"the object store at {self.location} is unreachable ({reason}); the registry "
            "keeps trying and recovers by itself once the store is back"
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._ready:
            await self.ensure_ready()
        return await self._call(fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except S3Error as exc:
            if exc.code in _UNAVAILABLE_CODES:
                raise self._unavailable(exc) from exc
            raise
        except (urllib3.exceptions.HTTPError, OSError, ServerError) as exc:
            raise self._unavailable(exc) from exc

    async def ensure_ready(self) -> None:
        async with self._ready_lock:
            if self._ready:
                return

            def make_bucket() -> None:
                if not self._client.bucket_exists(self.bucket):
                    try:
                        self._client.make_bucket(self.bucket)
                    except S3Error as exc:
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

            await self._call(make_bucket)
            self._ready = True

    async def close(self) -> None:
        self._client._http.clear()

    # --- records

    async def read(self, key: str) -> tuple[bytes, str]:
        def read() -> tuple[bytes, str]:
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    raise ObjectNotFound(key) from None
                raise
            try:
                return response.read(), _etag(response)
            finally:
                response.close()
                response.release_conn()

        return await self._run(read)

    async def write(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/json"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'

        def write() -> str:
            try:
                response = self._client._execute(
                    "PUT", self.bucket, key, body=data, headers=headers
                )
            except S3Error as exc:
                conditional = if_none_match or if_match is not None
                if exc.code in ("PreconditionFailed", "ConditionalRequestConflict") or (
                    if_match is not None and exc.code in _MISSING_CODES
                ):
                    raise PreconditionFailed(key) from None
                if conditional and exc.response.status == 412:
                    raise PreconditionFailed(key) from None
                raise
            return _etag(response)

        return await self._run(write)

    async def delete(self, key: str) -> None:
        await self._run(self._client.remove_object, self.bucket, key)

    async def list_keys(self, prefix: str) -> list[str]:
        def walk() -> list[str]:
            return sorted(
                str(item.object_name)
                for item in self._client.list_objects(self.bucket, prefix, recursive=True)
            )

        return await self._run(walk)

    async def list_children(self, prefix: str) -> list[str]:
        def children() -> list[str]:
            names = {
                str(item.object_name)[len(prefix) :].rstrip("/")
                for item in self._client.list_objects(self.bucket, prefix, recursive=False)
            }
            return sorted(names)

        return await self._run(children)

    def _size(self, key: str) -> int | None:
        try:
            return int(self._client.stat_object(self.bucket, key).size or 0)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return None
            raise

    async def exists(self, key: str) -> bool:
        return await self._run(self._size, key) is not None

    # --- blobs

    async def _index(self, digest: str) -> BlobIndex | None:
        key = keys.blob(digest)
        size = await self._run(self._size, key)
        if size is None:
            return None
        if size <= MAX_INDEX_BYTES:
            try:
                data, _ = await self.read(key)
            except ObjectNotFound:
                return None
            with contextlib.suppress(ValidationError):
                index = BlobIndex.model_validate_json(data)
                # No blob can hold an index naming its own digest, so this is never a blob.
                if index.sha256 == digest:
                    return index
        # Stored by a registry from before blobs were kept in parts: the bytes are at the key.
        return BlobIndex(sha256=digest, size_bytes=size, upload_id="", part_size_bytes=size)

    @staticmethod
    def _stored_parts(index: BlobIndex) -> list[tuple[int, str, int, int]]:
        """(number, key, offset, size) of each part of a published blob."""
        if not index.upload_id:
            return [(1, keys.blob(index.sha256), 0, index.size_bytes)]
        return _part_objects(index.sha256, index.upload_id, index.size_bytes, index.part_size_bytes)

    @staticmethod
    def _upload_parts(state: BlobUploadState) -> list[tuple[int, str, int, int]]:
        """(number, key, offset, size) of each part object an upload sends."""
        return _part_objects(state.sha256, state.upload_id, state.size_bytes, state.part_size_bytes)

    def _hash_parts(self, part_keys: list[str]) -> tuple[str, int]:
        """SHA-256 and size of the parts laid end to end; a missing part ends the bytes early,
        so the digest then differs from the one declared."""

        def chunks() -> Iterator[bytes]:
            for key in part_keys:
                try:
                    response = self._client.get_object(self.bucket, key)
                except S3Error as exc:
                    if exc.code in _MISSING_CODES:
                        return
                    raise
                try:
                    yield from response.stream(HASH_CHUNK_BYTES)
                finally:
                    response.close()
                    response.release_conn()

        return hash_chunks(chunks())

    def _remove(self, names: list[str]) -> None:
        errors = self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names))
        failed = [error for error in errors if error.code not in _MISSING_CODES]
        if failed:
            raise Internal(
                f"the object store at {self.location} refused to delete {len(failed)} "
                f"object(s), {failed[0].name} first: {failed[0].code}: {failed[0].message}"
            )

    def _remove_prefix(self, prefix: str) -> None:
        names = [
            str(item.object_name)
            for item in self._client.list_objects(self.bucket, prefix, recursive=True)
        ]
        if names:
            self._remove(names)

    async def blob_size(self, digest: str) -> int | None:
        index = await self._index(digest)
        return None if index is None else index.size_bytes

    async def start_blob_upload(
        self, upload_id: str, digest: str, size: int, part_size: int
    ) -> BlobUploadState:
        layout = part_layout(size, part_size)
        return BlobUploadState(
            sha256=digest,
            size_bytes=size,
            method="parts",
            upload_id=upload_id,
            part_size_bytes=layout[0][2] if len(layout) > 1 else max(size, 1),
        )

    async def upload_grant(
        self, state: BlobUploadState, *, accept_local_files: bool, expire_time: datetime
    ) -> UploadGrantSpec:
        expires = max(expire_time - datetime.now(UTC), _ONE_SECOND)
        parts = []
        for number, key, offset, size in self._upload_parts(state):
            url = self._presigner.get_presigned_url("PUT", self.bucket, key, expires=expires)
            request = HttpRequestSpec("PUT", url, {"If-None-Match": "*"})
            parts.append(PartSpec(number, offset, size, request))
        return UploadGrantSpec(
            sha256=state.sha256,
            size_bytes=state.size_bytes,
            expire_time=expire_time,
            parts=tuple(parts),
            part_size_bytes=state.part_size_bytes,
        )

    async def finish_blob_upload(
        self, state: BlobUploadState, parts: list[UploadedPart] | None
    ) -> None:
        prefix = keys.blob_parts(state.sha256, state.upload_id)
        expected = self._upload_parts(state)

        def stored() -> dict[str, tuple[int, str]]:
            return {
                str(item.object_name): (int(item.size or 0), str(item.etag or "").strip('"'))
                for item in self._client.list_objects(self.bucket, prefix, recursive=True)
            }

        found = await self._run(stored)
        reported = {p.part_number: p.etag.strip('"') for p in parts or () if p.etag}
        missing, wrong = [], []
        for number, key, _, size in expected:
            arrived = found.get(key)
            if arrived is None:
                missing.append(str(number))
            elif arrived[0] != size:
                wrong.append(f"part {number} has {arrived[0]} bytes, not {size}")
            elif number in reported and reported[number] != arrived[1]:
                wrong.append(f"part {number} changed after it was sent")
        if missing:
            raise BlobIncomplete(
                f"blob {state.sha256}: part(s) {', '.join(missing[:10])} of {len(expected)} "
                "were not uploaded"
            )
        if wrong:
            raise BlobIncomplete(f"blob {state.sha256}: {'; '.join(wrong[:5])}")

    async def hash_uploaded(self, state: BlobUploadState) -> tuple[str, int] | None:
        part_keys = [key for _, key, _, _ in self._upload_parts(state)]
        if await self._run(self._size, part_keys[0]) is None:
            return None
        return await self._run(self._hash_parts, part_keys)

    async def hash_blob(self, digest: str) -> tuple[str, int] | None:
        index = await self._index(digest)
        if index is None:
            return None
        part_keys = [key for _, key, _, _ in self._stored_parts(index)]
        return await self._run(self._hash_parts, part_keys)

    async def publish_blob(self, state: BlobUploadState) -> None:
        index = BlobIndex(
            sha256=state.sha256,
            size_bytes=state.size_bytes,
            upload_id=state.upload_id,
            part_size_bytes=state.part_size_bytes,
        )
        try:
            await self.write(keys.blob(state.sha256), dump(index), if_none_match=True)
        except PreconditionFailed:
            # Published already: by an earlier commit of this upload that did not finish, or by
            # another upload of the same bytes, whose parts then make up the blob.
            await self.discard_blob_upload(state)

    async def discard_blob_upload(
        self, state: BlobUploadState, *, delete_arrived: bool = False
    ) -> None:
        if not delete_arrived:
            index = await self._index(state.sha256)
            if index is not None and index.upload_id == state.upload_id:
                return  # these parts are the published blob
        await self._run(self._remove_prefix, keys.blob_parts(state.sha256, state.upload_id))

    async def delete_blob(self, digest: str) -> None:
        index = await self._index(digest)
        if index is None or not index.upload_id:
            await self.delete(keys.blob(digest))
            return
        # The index goes first, so the blob is gone at once (never read half-deleted); the
        # marker written before it names the parts, so that a process dying before they are
        # deleted leaves them to finish_interrupted_deletions rather than to nobody.
        marker = keys.parts_deletion(digest, index.upload_id)
        await self.write(marker, b"")
        await self.delete(keys.blob(digest))
        await self._run(self._remove_prefix, keys.blob_parts(digest, index.upload_id))
        await self.delete(marker)

    async def finish_interrupted_deletions(self) -> int:
        finished = 0
        for marker in await self.list_keys(keys.DELETING):
            digest, _, upload_id = marker.removeprefix(keys.DELETING).partition("/")
            index = await self._index(digest)
            if index is not None and index.upload_id == upload_id:
                # Not begun, or begun by a live process: the blob is whole, and a collection that
                # deletes it (or the janitor's, finishing a dead one) writes this marker again.
                continue
            await self._run(self._remove_prefix, keys.blob_parts(digest, upload_id))
            await self.delete(marker)
            finished += 1
        return finished

    async def download_grant(
        self, digest: str, *, accept_local_files: bool, expire_time: datetime
    ) -> DownloadGrantSpec:
        index = await self._index(digest)
        if index is None:
            raise FailedPrecondition(
                f"blob {digest} is missing from {self.location}: the store lost it; delete the "
                "versions that use it and push them again"
            )
        expires = max(expire_time - datetime.now(UTC), _ONE_SECOND)
        parts = []
        for number, key, offset, size in self._stored_parts(index):
            url = self._presigner.get_presigned_url("GET", self.bucket, key, expires=expires)
            parts.append(PartSpec(number, offset, size, HttpRequestSpec("GET", url)))
        return DownloadGrantSpec(expire_time=expire_time, parts=tuple(parts))
