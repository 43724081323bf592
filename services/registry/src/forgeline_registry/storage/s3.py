"""The S3 driver, on the `minio` SDK: MinIO in compose, any S3-protocol store in general.

Records are objects written with S3 conditional writes (``If-None-Match: *`` to create,
``If-Match: <etag>`` to compare-and-swap), which MinIO and AWS S3 apply atomically.

Every blob is sent as an S3 multipart upload that targets its final key,
``blobs/sha256/<digest>``, with presigned part URLs (one part for a small blob). Clients upload
parts straight to the store; only the registry completes the upload, with ``If-None-Match: *``,
so a blob key is written once and never overwritten. The registry then reads the blob back and
hashes it: a mismatch deletes it before anything refers to it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from xml.etree import ElementTree

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error, ServerError

from forgeline_kit.errors import Unavailable
from forgeline_registry.manifests import BlobUploadState, keys
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
#: ListParts pages (1,000 parts each) to read at most: S3 allows 10,000 parts.
MAX_LIST_PAGES = 10
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

    async def blob_size(self, digest: str) -> int | None:
        return await self._run(self._size, keys.blob(digest))

    async def start_blob_upload(
        self, upload_id: str, digest: str, size: int, part_size: int
    ) -> BlobUploadState:
        key = keys.blob(digest)
        headers = {"Content-Type": "application/octet-stream"}
        multipart_id = await self._run(
            self._client._create_multipart_upload, self.bucket, key, headers
        )
        layout = part_layout(size, part_size)
        return BlobUploadState(
            sha256=digest,
            size_bytes=size,
            method="multipart",
            multipart_upload_id=multipart_id,
            part_size_bytes=layout[0][2] if len(layout) > 1 else max(size, 1),
        )

    async def upload_grant(
        self, state: BlobUploadState, *, accept_local_files: bool, expire_time: datetime
    ) -> UploadGrantSpec:
        key = keys.blob(state.sha256)
        expires = max(expire_time - datetime.now(UTC), _ONE_SECOND)
        parts = []
        for number, offset, size in part_layout(state.size_bytes, state.part_size_bytes):
            url = self._presigner.get_presigned_url(
                "PUT",
                self.bucket,
                key,
                expires=expires,
                extra_query_params={
                    "partNumber": str(number),
                    "uploadId": state.multipart_upload_id,
                },
            )
            parts.append(PartSpec(number, offset, size, HttpRequestSpec("PUT", url)))
        return UploadGrantSpec(
            sha256=state.sha256,
            size_bytes=state.size_bytes,
            expire_time=expire_time,
            parts=tuple(parts),
            part_size_bytes=state.part_size_bytes,
        )

    def _uploaded_parts(self, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        marker: str | None = None
        for _ in range(MAX_LIST_PAGES):
            result = self._client._list_parts(
                self.bucket, key, upload_id, part_number_marker=marker
            )
            parts.extend(result.parts)
            if not result.is_truncated:
                break
            marker = str(result.next_part_number_marker)
        return parts

    async def finish_blob_upload(
        self, state: BlobUploadState, parts: list[UploadedPart] | None
    ) -> None:
        key = keys.blob(state.sha256)
        expected = part_layout(state.size_bytes, state.part_size_bytes)

        def complete() -> None:
            reported = {p.part_number: p.etag for p in parts or ()}
            if set(reported) >= {number for number, _, _ in expected}:
                # Every part reported: the store checks the ETags when completing.
                return self._complete(key, state, expected, reported)
            try:
                stored = self._uploaded_parts(key, state.multipart_upload_id)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    # Completed by an earlier commit that did not finish, or never begun.
                    if self._size(key) is not None:
                        return
                    raise BlobIncomplete(
                        f"the upload of blob {state.sha256} is gone from the store; "
                        "begin the version again"
                    ) from None
                raise
            by_number = {part.part_number: part.etag for part in stored}
            missing = [number for number, _, _ in expected if number not in by_number]
            if missing:
                raise BlobIncomplete(
                    f"blob {state.sha256}: part(s) {', '.join(map(str, missing[:10]))} of "
                    f"{len(expected)} were not uploaded"
                )
            return self._complete(key, state, expected, by_number)

        await self._run(complete)

    def _complete(
        self,
        key: str,
        state: BlobUploadState,
        expected: list[tuple[int, int, int]],
        etags: dict[int, str],
    ) -> None:
        root = ElementTree.Element("CompleteMultipartUpload")
        for number, _, _ in expected:
            part = ElementTree.SubElement(root, "Part")
            ElementTree.SubElement(part, "PartNumber").text = str(number)
            ElementTree.SubElement(part, "ETag").text = '"' + etags[number].strip('"') + '"'
        body = io.BytesIO()
        ElementTree.ElementTree(root).write(body)
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/xml",
            # Only the first completion creates the blob; a blob key is never overwritten.
            "If-None-Match": "*",
        }
        try:
            self._client._execute(
                "POST",
                self.bucket,
                key,
                body=body.getvalue(),
                headers=headers,
                query_params={"uploadId": state.multipart_upload_id},
            )
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                # Another upload published the blob first: ours is not needed.
                self._abort(key, state.multipart_upload_id)
            elif exc.code in _MISSING_CODES and self._size(key) is not None:
                pass  # completed by an earlier commit of this upload that did not finish
            elif exc.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", *_MISSING_CODES):
                raise BlobIncomplete(
                    f"the store refused to assemble blob {state.sha256}: {exc.message}"
                ) from None
            else:
                raise

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client._abort_multipart_upload(self.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code not in _MISSING_CODES:
                raise

    def _hash_object(self, key: str) -> tuple[str, int] | None:
        try:
            response = self._client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return None
            raise
        try:
            chunks: Iterator[bytes] = response.stream(HASH_CHUNK_BYTES)
            return hash_chunks(chunks)
        finally:
            response.close()
            response.release_conn()

    async def hash_uploaded(self, state: BlobUploadState) -> tuple[str, int] | None:
        return await self._run(self._hash_object, keys.blob(state.sha256))

    async def hash_blob(self, digest: str) -> tuple[str, int] | None:
        return await self._run(self._hash_object, keys.blob(digest))

    async def publish_blob(self, state: BlobUploadState) -> None:
        return None  # completing the multipart upload put it in place

    async def discard_blob_upload(
        self, state: BlobUploadState, *, delete_arrived: bool = False
    ) -> None:
        key = keys.blob(state.sha256)
        if state.multipart_upload_id:
            await self._run(self._abort, key, state.multipart_upload_id)
        if delete_arrived:
            await self._run(self._client.remove_object, self.bucket, key)

    async def download_grant(
        self, digest: str, *, accept_local_files: bool, expire_time: datetime
    ) -> DownloadGrantSpec:
        expires = max(expire_time - datetime.now(UTC), _ONE_SECOND)
        url = self._presigner.get_presigned_url("GET", self.bucket, keys.blob(digest), expires)
        return DownloadGrantSpec(expire_time=expire_time, get=HttpRequestSpec("GET", url))
