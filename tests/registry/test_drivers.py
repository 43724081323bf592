"""The one driver suite: every storage driver (filesystem, S3 on loopback, real MinIO when
MINIO_ENDPOINT is set) must behave the same, record by record and blob by blob."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from forgeline_kit.errors import FailedPrecondition
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry.convert import download_grant_to_pb, upload_grant_to_pb
from forgeline_registry.manifests import ArtifactRecord, keys, now
from forgeline_registry.storage.base import (
    BlobIncomplete,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    UploadedPart,
)
from forgeline_registry_client.transfer import Transfers

from .conftest import StoreConfig
from .helpers import random_file, sha256_of


@pytest.fixture
async def store(store_kind: StoreConfig) -> ObjectStore:
    store = store_kind.store()
    await store.ensure_ready()
    return store


async def test_create_if_absent_has_exactly_one_winner(store: ObjectStore) -> None:
    results = await asyncio.gather(
        *(store.write("race/key.json", f"{i}".encode(), if_none_match=True) for i in range(8)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, PreconditionFailed) for r in results if not isinstance(r, str))
    data, _ = await store.read("race/key.json")
    assert data in {f"{i}".encode() for i in range(8)}


async def test_compare_and_swap_refuses_a_stale_etag(store: ObjectStore) -> None:
    first = await store.write("cas/a.json", b"1")
    second = await store.write("cas/a.json", b"2", if_match=first)
    with pytest.raises(PreconditionFailed):
        await store.write("cas/a.json", b"3", if_match=first)
    assert await store.read("cas/a.json") == (b"2", second)
    with pytest.raises(PreconditionFailed):
        await store.write("cas/missing.json", b"x", if_match=first)


async def test_read_list_and_delete(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.read("nothing/here.json")
    for key in ("tree/a/1.json", "tree/a/2.json", "tree/b.json", "tree2/c.json"):
        await store.write(key, b"{}")
    assert await store.list_keys("tree/") == ["tree/a/1.json", "tree/a/2.json", "tree/b.json"]
    assert await store.list_children("tree/") == ["a", "b.json"]
    assert await store.list_children("absent/") == []
    assert await store.exists("tree/b.json")
    await store.delete("tree/b.json")
    await store.delete("tree/b.json")  # deleting twice is fine
    assert not await store.exists("tree/b.json")


async def test_blob_upload_through_a_grant_is_hashed_and_published(
    store: ObjectStore, store_kind: StoreConfig, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "blob.bin", 11 * 1024 * 1024 + 17)
    data = source.read_bytes()
    digest = sha256_of(data)
    state = await store.start_blob_upload("up-test", digest, len(data), 5 * 1024 * 1024)
    expiry = now() + timedelta(minutes=5)
    grant = upload_grant_to_pb(
        await store.upload_grant(state, accept_local_files=True, expire_time=expiry)
    )
    if store_kind.kind != "fs":
        assert grant.WhichOneof("method") == "multipart"
        assert [p.size_bytes for p in grant.multipart.parts] == [5 << 20, 5 << 20, (1 << 20) + 17]
    transfers = Transfers(parallel=3)
    try:
        parts = await asyncio.to_thread(transfers.upload, grant, source)
        assert await store.blob_size(digest) is None  # nothing at the blob's key before commit
        await store.finish_blob_upload(state, [UploadedPart(p.part_number, p.etag) for p in parts])
        assert await store.hash_uploaded(state) == (digest, len(data))
        await store.publish_blob(state)
        await store.discard_blob_upload(state)
        assert await store.blob_size(digest) == len(data)
        assert await store.hash_blob(digest) == (digest, len(data))
        download = download_grant_to_pb(
            ArtifactRecord(
                path="b/blob.bin", kind="ARTIFACT_KIND_OTHER", sha256=digest, size_bytes=len(data)
            ),
            await store.download_grant(digest, accept_local_files=True, expire_time=expiry),
        )
        await asyncio.to_thread(transfers.download, download, tmp_path / "out" / "blob.bin")
        assert (tmp_path / "out" / "blob.bin").read_bytes() == data
    finally:
        transfers.close()


@pytest.mark.parametrize("store_kind", ["s3", "minio"], indirect=True)
async def test_an_unfinished_multipart_upload_is_reported_incomplete(
    store: ObjectStore, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "blob.bin", 6 * 1024 * 1024)
    digest = sha256_of(source.read_bytes())
    state = await store.start_blob_upload("up-partial", digest, 6 << 20, 5 << 20)
    grant = upload_grant_to_pb(
        await store.upload_grant(
            state, accept_local_files=False, expire_time=now() + timedelta(minutes=5)
        )
    )
    del grant.multipart.parts[1:]  # send the first part only
    transfers = Transfers()
    try:
        await asyncio.to_thread(transfers.upload, grant, source)
    finally:
        transfers.close()
    with pytest.raises(BlobIncomplete, match=r"part\(s\) 2 of 2"):
        await store.finish_blob_upload(state, None)
    await store.discard_blob_upload(state)
    assert await store.blob_size(digest) is None


@pytest.mark.parametrize("store_kind", ["s3", "minio"], indirect=True)
async def test_s3_parts_are_write_once_resumable_and_collected_with_their_blob(
    store: ObjectStore, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "blob.bin", (10 << 20) + 5)
    data = source.read_bytes()
    digest = sha256_of(data)
    expiry = now() + timedelta(minutes=5)
    state = await store.start_blob_upload("up-parts", digest, len(data), 5 << 20)
    grant = upload_grant_to_pb(
        await store.upload_grant(state, accept_local_files=False, expire_time=expiry)
    )
    transfers = Transfers()
    try:
        sent = await asyncio.to_thread(transfers.upload, grant, source)
        resumed = await asyncio.to_thread(transfers.upload, grant, source)
        assert [p.etag for p in resumed] == ["", "", ""]  # every part had arrived already
        forged = [UploadedPart(p.part_number, "0" * 32) for p in sent]
        with pytest.raises(BlobIncomplete, match="part 1 changed after it was sent"):
            await store.finish_blob_upload(state, forged)
        await store.finish_blob_upload(state, [UploadedPart(p.part_number, p.etag) for p in sent])
        assert await store.hash_uploaded(state) == (digest, len(data))
        await store.publish_blob(state)
        await store.discard_blob_upload(state)  # what sweeping the committed upload does

        artifact = ArtifactRecord(
            path="blob.bin", kind="ARTIFACT_KIND_OTHER", sha256=digest, size_bytes=len(data)
        )
        download = download_grant_to_pb(
            artifact,
            await store.download_grant(digest, accept_local_files=False, expire_time=expiry),
        )
        assert download.WhichOneof("method") == "multipart"
        assert [p.offset for p in download.multipart.parts] == [0, 5 << 20, 10 << 20]
        await asyncio.to_thread(transfers.download, download, tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == data

        await store.write(keys.blob_part(digest, "up-parts", 2), b"short")
        with pytest.raises(FailedPrecondition, match=r"offset 5242880 has 5 bytes.*damaged"):
            await asyncio.to_thread(transfers.download, download, tmp_path / "bad.bin")
        assert not (tmp_path / "bad.bin").exists()

        await store.delete_blob(digest)
        assert await store.blob_size(digest) is None
        assert await store.list_keys(f"parts/sha256/{digest}/") == []
    finally:
        transfers.close()


@pytest.mark.parametrize("store_kind", ["s3", "minio"], indirect=True)
@pytest.mark.parametrize("size", [0, 100, 6 << 20])
async def test_s3_blobs_stored_whole_by_an_earlier_release_still_work(
    store: ObjectStore, tmp_path: Path, size: int
) -> None:
    data = random_file(tmp_path / "old.bin", size).read_bytes()
    digest = sha256_of(data)
    await store.write(keys.blob(digest), data)  # one object at the blob's key, as it used to be
    assert await store.blob_size(digest) == size
    assert await store.hash_blob(digest) == (digest, size)
    artifact = ArtifactRecord(
        path="old.bin", kind="ARTIFACT_KIND_OTHER", sha256=digest, size_bytes=size
    )
    grant = download_grant_to_pb(
        artifact,
        await store.download_grant(
            digest, accept_local_files=False, expire_time=now() + timedelta(minutes=5)
        ),
    )
    transfers = Transfers()
    try:
        await asyncio.to_thread(transfers.download, grant, tmp_path / "out.bin")
    finally:
        transfers.close()
    assert (tmp_path / "out.bin").read_bytes() == data
    await store.delete_blob(digest)
    assert await store.blob_size(digest) is None


async def test_fs_driver_refuses_clients_that_cannot_share_its_files(fs_store: StoreConfig) -> None:
    store = fs_store.store()
    await store.ensure_ready()
    state = await store.start_blob_upload("up-x", "0" * 64, 1, 5 << 20)
    with pytest.raises(FailedPrecondition, match="FORGELINE_REGISTRY_STORAGE=s3"):
        await store.upload_grant(
            state, accept_local_files=False, expire_time=now() + timedelta(minutes=1)
        )


async def test_blob_keys_are_content_addressed(store: ObjectStore) -> None:
    assert keys.blob("ab" * 32) == "blobs/sha256/" + "ab" * 32
    assert pb.ARTIFACT_KIND_GGUF  # the proto the drivers serve is importable
