"""The driver interface every storage backend implements.

A driver knows two kinds of things. Small *records* (JSON manifests, aliases, markers) are read
and written whole, with the two conditional writes the registry builds its guarantees on: create
only if absent (``if_none_match``), and replace only if unchanged since read (``if_match`` an
ETag). Large *blobs* never pass through the registry: the driver sets up an upload for a missing
blob, hands out grants with which a client sends the bytes straight to the store, hashes what
arrived at commit, and only then publishes it under ``blobs/sha256/<digest>`` (the bytes
themselves, or a record of where their parts are), so nothing unverified is ever at a blob's key.

Drivers turn an unreachable store into `forgeline_kit.errors.Unavailable`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from forgeline_registry.manifests import BlobUploadState
from forgeline_registry_client.transfer import pipelined

__all__ = [
    "HASH_CHUNK_BYTES",
    "BlobIncomplete",
    "DownloadGrantSpec",
    "HttpRequestSpec",
    "ObjectNotFound",
    "ObjectStore",
    "PartSpec",
    "PreconditionFailed",
    "UploadGrantSpec",
    "UploadedPart",
    "hash_chunks",
    "part_layout",
]

#: Size of the reads that hash a blob: big enough to keep hashing fast, small enough that memory
#: stays bounded whatever the blob's size.
HASH_CHUNK_BYTES = 1 << 20
#: S3's limits on multipart uploads.
MIN_PART_BYTES = 5 << 20
MAX_PART_BYTES = 5 << 30
MAX_PARTS = 10_000


class ObjectNotFound(Exception):  # noqa: N818 (a condition, not a failure)
    """The record asked for does not exist."""


class PreconditionFailed(Exception):  # noqa: N818 (a condition, not a failure)
    """A conditional write lost: the record exists already, or changed since it was read."""


class BlobIncomplete(Exception):  # noqa: N818 (a condition, not a failure)
    """The bytes of a blob upload have not all arrived; the message says what is missing."""


@dataclass(frozen=True)
class HttpRequestSpec:
    """An HTTP request a client makes itself (usually to a presigned URL)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartSpec:
    """One part of a blob sent or fetched in parts."""

    part_number: int
    offset: int
    size_bytes: int
    request: HttpRequestSpec


@dataclass(frozen=True)
class UploadGrantSpec:
    """How a client sends one blob: exactly one of `put`, `parts` and `local_path` is set."""

    sha256: str
    size_bytes: int
    expire_time: datetime
    put: HttpRequestSpec | None = None
    parts: tuple[PartSpec, ...] | None = None
    part_size_bytes: int = 0
    local_path: str | None = None


@dataclass(frozen=True)
class DownloadGrantSpec:
    """How a client fetches one blob: exactly one of `parts` and `local_path` is set."""

    expire_time: datetime
    parts: tuple[PartSpec, ...] | None = None
    local_path: str | None = None


@dataclass(frozen=True)
class UploadedPart:
    """A part the client reports as sent, with the ETag the store answered."""

    part_number: int
    etag: str


def part_layout(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, size) of each part of a `size`-byte blob; one part when it is
    empty. `part_size` is first raised so that no more than S3's 10,000 parts are needed."""
    part_size = max(part_size, MIN_PART_BYTES, -(-size // MAX_PARTS))
    if size == 0:
        return [(1, 0, 0)]
    return [
        (index + 1, offset, min(part_size, size - offset))
        for index, offset in enumerate(range(0, size, part_size))
    ]


def hash_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """SHA-256 and length of the concatenated `chunks`.

    The chunks are hashed on a second thread while the next ones are read, so reading (network
    or disk) and hashing overlap (`forgeline_registry_client.transfer.pipelined`, which clients
    hash their downloads with too); at most `PIPELINE_DEPTH` chunks wait in between.
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in pipelined(chunks, digest.update):
        size += len(chunk)
    return digest.hexdigest(), size


class ObjectStore(abc.ABC):
    """A storage backend: records with conditional writes, and blobs sent through grants."""

    #: Where the store is, for messages (never a secret).
    location: str
    #: Whether the driver hands out local-file grants (host paths). Only the filesystem driver
    #: does, and only to a client that asks for them: the registry refuses a grant with a local
    #: path from any other driver, or for a client that did not ask, as a bug.
    grants_local_files: ClassVar[bool] = False

    @abc.abstractmethod
    async def ensure_ready(self) -> None:
        """Create what the store needs (bucket, directories). Raises Unavailable."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    # --- records

    @abc.abstractmethod
    async def read(self, key: str) -> tuple[bytes, str]:
        """The record's bytes and ETag. Raises ObjectNotFound."""

    @abc.abstractmethod
    async def write(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Store a record and return its ETag. With `if_none_match`, only if the key is free;
        with `if_match`, only if the record still has that ETag. Raises PreconditionFailed."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a record or blob; removing a missing one succeeds."""

    @abc.abstractmethod
    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (which ends with ``/``), in key order."""

    @abc.abstractmethod
    async def list_children(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (``a`` for ``prefix/a`` and ``prefix/a/b``)."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether the key holds a record or blob."""

    # --- blobs

    @abc.abstractmethod
    async def blob_size(self, digest: str) -> int | None:
        """Size of the stored blob, or None when the store does not hold it."""

    @abc.abstractmethod
    async def start_blob_upload(
        self, upload_id: str, digest: str, size: int, part_size: int
    ) -> BlobUploadState:
        """Set up the upload of a missing blob."""

    @abc.abstractmethod
    async def upload_grant(
        self, state: BlobUploadState, *, accept_local_files: bool, expire_time: datetime
    ) -> UploadGrantSpec:
        """A grant with which a client sends the blob's bytes; a local path only when
        `accept_local_files` (and the driver `grants_local_files`).

        Raises:
            FailedPrecondition: the client cannot use any method this driver offers.
        """

    @abc.abstractmethod
    async def finish_blob_upload(
        self, state: BlobUploadState, parts: list[UploadedPart] | None
    ) -> None:
        """Check that every byte the client was to send has arrived; `parts` are what the client
        reported sending, when it used a part grant. Raises BlobIncomplete when bytes are
        missing or changed since they were reported."""

    @abc.abstractmethod
    async def hash_uploaded(self, state: BlobUploadState) -> tuple[str, int] | None:
        """SHA-256 and size of what arrived for the upload, or None when nothing did."""

    @abc.abstractmethod
    async def publish_blob(self, state: BlobUploadState) -> None:
        """Make verified bytes the blob ``blobs/sha256/<digest>`` (if it is not there yet) and
        release what the upload held."""

    @abc.abstractmethod
    async def discard_blob_upload(
        self, state: BlobUploadState, *, delete_arrived: bool = False
    ) -> None:
        """Forget an upload: staged files and parts, unless they were published as the blob,
        and with `delete_arrived`, bytes that arrived but failed verification."""

    @abc.abstractmethod
    async def delete_blob(self, digest: str) -> None:
        """Remove the blob and every byte stored for it; removing a missing one succeeds."""

    async def finish_interrupted_deletions(self) -> int:
        """Finish blob deletions a dying process left half-done; how many. A driver whose
        deletions are a single step has none to finish."""
        return 0

    @abc.abstractmethod
    async def download_grant(
        self, digest: str, *, accept_local_files: bool, expire_time: datetime
    ) -> DownloadGrantSpec:
        """A grant with which a client reads the blob; a local path only when
        `accept_local_files` (and the driver `grants_local_files`).

        Raises:
            FailedPrecondition: the client cannot use any method this driver offers.
        """

    @abc.abstractmethod
    async def hash_blob(self, digest: str) -> tuple[str, int] | None:
        """SHA-256 and size of the stored blob, or None when it is missing."""
