"""The filesystem driver makes a blob durable before anything can name it: its bytes and the
directory entry linking it in are flushed to the disk (fsync) before the call that publishes it
returns, and every record written (a manifest last of all) is flushed with its directory. A power
cut can then lose a version that was being written, never leave one visible whose blobs are not on
the disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from forgeline_registry.manifests import keys
from forgeline_registry.storage.fs import FsStore


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(device, inode) of every file and directory fsynced, in order."""
    calls: list[tuple[int, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        status = os.fstat(fd)
        calls.append((status.st_dev, status.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


async def test_a_published_blob_and_its_directory_are_on_the_disk(
    tmp_path: Path, flushed: list[tuple[int, int]]
) -> None:
    store = FsStore(tmp_path / "store")
    await store.ensure_ready()
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    state = await store.start_blob_upload("upload-1", digest, len(data), len(data))
    # What a client with a local-file grant does.
    await asyncio.to_thread(Path(state.staging_path).write_bytes, data)

    await store.publish_blob(state)

    blob = tmp_path / "store" / "objects" / keys.blob(digest)
    assert blob.read_bytes() == data
    assert _identity(blob) in flushed  # the bytes
    assert _identity(blob.parent) in flushed  # the entry that names them


async def test_a_record_is_flushed_with_its_directory(
    tmp_path: Path, flushed: list[tuple[int, int]]
) -> None:
    store = FsStore(tmp_path / "store")
    await store.ensure_ready()

    await store.write("models/acme/versions/1.json", b"{}", if_none_match=True)

    record = tmp_path / "store" / "objects" / "models/acme/versions/1.json"
    assert _identity(record) in flushed
    assert _identity(record.parent) in flushed
    assert flushed.index(_identity(record)) < flushed.index(_identity(record.parent))
