"""The filesystem driver: the embedded default, for a registry and clients on one host.

Records and blobs are files under ``<root>/objects/<key>``. Conditional writes are atomic across
processes and replicas sharing the directory: a create links a fully written temporary file
into place (``os.link`` fails if the name exists), a compare-and-swap holds an exclusive
``flock`` on the key's lock file while it compares and renames.

Blob bytes travel as local files (`LocalFile` grants): an uploader writes
``<root>/staging/<upload id>/<digest>``, which the registry hashes at commit and then links to
``blobs/sha256/<digest>``; a downloader reads the blob file itself and must not modify it. Blob
files are made read-only to guard against that. Clients that do not share the filesystem need
the S3 driver: this one has no HTTP endpoint, by design, to keep the embedded default small.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import ClassVar, TypeVar

from forgeline_kit.errors import FailedPrecondition, Unavailable
from forgeline_registry.manifests import BlobUploadState, keys
from forgeline_registry.storage.base import (
    HASH_CHUNK_BYTES,
    BlobIncomplete,
    DownloadGrantSpec,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    UploadedPart,
    UploadGrantSpec,
    hash_chunks,
)

__all__ = ["FsStore"]

T = TypeVar("T")


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk: a rename or link is durable only once
    its directory is, and a version must not become visible before its blobs are on the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            yield chunk


def _local_grants_only(accept_local_files: bool) -> None:
    """Refuse a transfer to a client that takes no local-file grants, the only ones given here.

    Raises:
        FailedPrecondition: the client does not accept local files.
    """
    if not accept_local_files:
        raise FailedPrecondition(
            "this registry stores blobs on its local filesystem and hands out local-file "
            "grants only: run the client on the registry's host (and let it accept local "
            "files), or run the registry with FORGELINE_REGISTRY_STORAGE=s3",
            field="transfer.accept_local_files",
        )


class FsStore(ObjectStore):
    """Objects as files under `root`."""

    #: Blobs travel only as local files: the registry and its clients share this host.
    grants_local_files: ClassVar[bool] = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.location = str(self.root)
        self._objects = self.root / "objects"
        self._staging = self.root / "staging"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except (ObjectNotFound, PreconditionFailed, BlobIncomplete):
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EEXIST) and not self.root.is_dir():
                raise self._unavailable(exc) from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: OSError) -> Unavailable:
        return Unavailable(
            f"the registry's storage directory {self.root} cannot be used: "
            f"{exc.strerror or exc}; it is retried on every request"
        )

    def _path(self, key: str) -> Path:
        # Keys are built from validated names only; refuse anything else outright.
        assert ".." not in key.split("/"), key
        assert not key.startswith("/"), key
        return self._objects / key

    async def ensure_ready(self) -> None:
        def make() -> None:
            for directory in (self._objects, self._staging, self._tmp, self._locks):
                directory.mkdir(parents=True, exist_ok=True)

        try:
            await asyncio.to_thread(make)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    # --- records

    async def read(self, key: str) -> tuple[bytes, str]:
        def read() -> tuple[bytes, str]:
            try:
                data = self._path(key).read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            return data, _etag(data)

        return await self._run(read)

    def _temporary(self, data: bytes) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        temporary = self._tmp / uuid.uuid4().hex
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return temporary

    def _lock_path(self, key: str) -> Path:
        self._locks.mkdir(parents=True, exist_ok=True)
        return self._locks / hashlib.sha256(key.encode()).hexdigest()[:32]

    async def write(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        def write() -> str:
            target = self._path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._temporary(data)
            try:
                if if_none_match:
                    try:
                        os.link(temporary, target)
                    except FileExistsError:
                        raise PreconditionFailed(key) from None
                elif if_match is not None:
                    with self._lock_path(key).open("a") as lock:
                        fcntl.flock(lock, fcntl.LOCK_EX)
                        try:
                            current = target.read_bytes()
                        except FileNotFoundError:
                            raise PreconditionFailed(key) from None
                        if _etag(current) != if_match:
                            raise PreconditionFailed(key)
                        os.replace(temporary, target)
                else:
                    os.replace(temporary, target)
                _fsync(target.parent)
            finally:
                temporary.unlink(missing_ok=True)
            return _etag(data)

        return await self._run(write)

    async def delete(self, key: str) -> None:
        def delete() -> None:
            self._path(key).unlink(missing_ok=True)

        await self._run(delete)

    async def list_keys(self, prefix: str) -> list[str]:
        assert prefix.endswith("/"), prefix

        def walk() -> list[str]:
            base = self._path(prefix)
            found: list[str] = []
            for directory, _, files in os.walk(base):
                relative = Path(directory).relative_to(self._objects).as_posix()
                found.extend(f"{relative}/{name}" for name in files)
            return sorted(found)

        return await self._run(walk)

    async def list_children(self, prefix: str) -> list[str]:
        assert prefix.endswith("/"), prefix

        def children() -> list[str]:
            try:
                return sorted(entry.name for entry in os.scandir(self._path(prefix)))
            except FileNotFoundError:
                return []

        return await self._run(children)

    async def exists(self, key: str) -> bool:
        return await self._run(self._path(key).exists)

    # --- blobs

    async def blob_size(self, digest: str) -> int | None:
        def size() -> int | None:
            try:
                return self._path(keys.blob(digest)).stat().st_size
            except FileNotFoundError:
                return None

        return await self._run(size)

    async def start_blob_upload(
        self, upload_id: str, digest: str, size: int, part_size: int
    ) -> BlobUploadState:
        staging = self._staging / upload_id / digest

        def make() -> None:
            staging.parent.mkdir(parents=True, exist_ok=True)

        await self._run(make)
        return BlobUploadState(
            sha256=digest, size_bytes=size, method="local", staging_path=str(staging)
        )

    async def upload_grant(
        self, state: BlobUploadState, *, accept_local_files: bool, expire_time: datetime
    ) -> UploadGrantSpec:
        _local_grants_only(accept_local_files)
        return UploadGrantSpec(
            sha256=state.sha256,
            size_bytes=state.size_bytes,
            expire_time=expire_time,
            local_path=state.staging_path,
        )

    async def finish_blob_upload(
        self, state: BlobUploadState, parts: list[UploadedPart] | None
    ) -> None:
        return None  # the client wrote the staged file itself

    async def hash_uploaded(self, state: BlobUploadState) -> tuple[str, int] | None:
        return await self._hash_file(Path(state.staging_path))

    async def publish_blob(self, state: BlobUploadState) -> None:
        staging = Path(state.staging_path)
        target = self._path(keys.blob(state.sha256))

        def publish() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.chmod(0o444)
            # The client wrote the staged file; its bytes reach the disk before the blob exists.
            _fsync(staging)
            # Exists already: the same content, verified by whoever put it there.
            with contextlib.suppress(FileExistsError):
                os.link(staging, target)
            _fsync(target.parent)
            staging.unlink(missing_ok=True)
            # Fails while other blobs of the upload are still staged.
            with contextlib.suppress(OSError):
                staging.parent.rmdir()

        await self._run(publish)

    async def discard_blob_upload(
        self, state: BlobUploadState, *, delete_arrived: bool = False
    ) -> None:
        staging = Path(state.staging_path)

        def discard() -> None:
            staging.unlink(missing_ok=True)
            # Fails while other blobs of the upload are still staged.
            with contextlib.suppress(OSError):
                staging.parent.rmdir()

        await self._run(discard)

    async def delete_blob(self, digest: str) -> None:
        await self.delete(keys.blob(digest))

    async def download_grant(
        self, digest: str, *, accept_local_files: bool, expire_time: datetime
    ) -> DownloadGrantSpec:
        _local_grants_only(accept_local_files)
        return DownloadGrantSpec(
            expire_time=expire_time, local_path=str(self._path(keys.blob(digest)))
        )

    async def hash_blob(self, digest: str) -> tuple[str, int] | None:
        return await self._hash_file(self._path(keys.blob(digest)))

    async def _hash_file(self, path: Path) -> tuple[str, int] | None:
        """SHA-256 and size of the file at `path`, read off the event loop; None when missing."""

        def digest() -> tuple[str, int] | None:
            try:
                return hash_chunks(_file_chunks(path))
            except FileNotFoundError:
                return None

        return await self._run(digest)
