"""What crashes leave behind never blocks a retry: uploads completed but never verified, commits
interrupted after the manifest, deletions and collections cut short, expired uploads; plus
renewing and aborting uploads."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from forgeline_kit.errors import Aborted, FailedPrecondition, NotFound
from forgeline_registry import collection
from forgeline_registry.convert import upload_grant_to_pb
from forgeline_registry.manifests import ArtifactRecord, UploadRecord, dump, keys
from forgeline_registry.service import NewVersion, Registry
from forgeline_registry.storage.base import UploadedPart
from forgeline_registry_client.transfer import Transfers

from .conftest import StoreConfig
from .helpers import random_file, sha256_of


@pytest.fixture
async def registry(store_kind: StoreConfig) -> Registry:
    store = store_kind.store()
    await store.ensure_ready()
    return Registry(store, store_kind.settings(upload_ttl_seconds=60))


def _new(path: Path, model: str = "m", request_id: str = "") -> NewVersion:
    data = path.read_bytes()
    record = ArtifactRecord(
        path=path.name, kind="ARTIFACT_KIND_OTHER", sha256=sha256_of(data), size_bytes=len(data)
    )
    return NewVersion(
        model=model,
        kind="VERSION_KIND_OTHER",
        artifacts=(record,),
        create_model=True,
        accept_local_files=True,
        request_id=request_id,
    )


async def _send(registry: Registry, upload_id: str, source: Path) -> list[UploadedPart]:
    """Upload every blob the upload misses from `source`; the parts sent."""
    found = await registry._get(keys.upload(upload_id), UploadRecord)
    assert found is not None
    sent: list[UploadedPart] = []
    transfers = Transfers()
    try:
        for state in found[0].blobs:
            grant = await registry.store.upload_grant(
                state,
                accept_local_files=True,
                expire_time=found[0].expire_time,
            )
            parts = await asyncio.to_thread(transfers.upload, upload_grant_to_pb(grant), source)
            sent += [UploadedPart(p.part_number, p.etag) for p in parts]
    finally:
        transfers.close()
    return sent


async def test_bytes_that_arrived_but_were_never_verified_are_verified_by_the_next_commit(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "weights.bin", 1 << 20)
    first = await registry.begin_version(_new(source))
    await _send(registry, first.upload_id, source)
    record = await registry._get(keys.upload(first.upload_id), UploadRecord)
    assert record is not None
    # What a registry killed after publishing the blob, before recording it verified, leaves.
    await registry.store.finish_blob_upload(record[0].blobs[0], None)
    await registry.store.publish_blob(record[0].blobs[0])

    second = await registry.begin_version(_new(source))
    assert second.present == (sha256_of(source.read_bytes()),)
    assert second.grants == ()
    version = await registry.commit_version(second.upload_id)
    assert version.manifest.number == 1


@pytest.mark.parametrize("store_kind", ["s3", "minio"], indirect=True)
async def test_a_damaged_unverified_blob_is_discarded_and_a_retry_succeeds(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "weights.bin", 6 << 20)
    declared = _new(source)
    digest = declared.artifacts[0].sha256
    good = source.read_bytes()
    first = await registry.begin_version(declared)
    await _send(registry, first.upload_id, source)
    record = await registry._get(keys.upload(first.upload_id), UploadRecord)
    assert record is not None
    state = record[0].blobs[0]
    await registry.store.finish_blob_upload(state, None)
    await registry.store.publish_blob(state)  # ... and the registry dies before verifying it
    # Meanwhile a part is replaced, as a client that kept its grant could do.
    await registry.store.write(keys.blob_part(digest, first.upload_id, 1), b"\1" * 1000)

    second = await registry.begin_version(declared)
    assert second.grants == ()  # the blob is published, but nobody recorded it verified
    with pytest.raises(FailedPrecondition, match="nothing was stored"):
        await registry.commit_version(second.upload_id)
    assert await registry.store.blob_size(digest) is None
    assert await registry.store.list_keys(f"parts/sha256/{digest}/") == []

    retry = await registry.begin_version(declared)
    assert len(retry.grants) == 1
    parts = await _send(registry, retry.upload_id, source)
    version = await registry.commit_version(retry.upload_id, {digest: parts})
    assert version.manifest.number == 1
    assert await registry.store.hash_blob(digest) == (sha256_of(good), len(good))


async def test_a_commit_interrupted_after_its_manifest_is_finished_not_repeated(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "a.bin", 1000)
    begun = await registry.begin_version(_new(source, request_id="once"))
    parts = await _send(registry, begun.upload_id, source)
    digest = sha256_of(source.read_bytes())
    found = await registry._get(keys.upload(begun.upload_id), UploadRecord)
    assert found is not None
    record, etag = found
    await registry._verify_blobs(record, {digest: parts} if parts else {})
    # The commit claimed number 1 and wrote its manifest, then died.
    manifest, _ = await registry._claim_number(record, etag)
    assert manifest.number == 1
    assert await registry.store.exists(keys.version("m", 1))
    assert not await registry.store.exists(keys.alias("m", "latest"))

    version = await registry.commit_version(begun.upload_id)
    assert version.manifest.number == 1
    assert version.aliases == ("latest",)
    numbers = await registry.store.list_children(keys.versions("m"))
    assert numbers == ["0000000001.json"]
    again = await registry.begin_version(_new(source, request_id="once"))
    assert again.committed is not None
    assert again.committed.manifest.number == 1


async def test_expired_uploads_are_swept_and_renew_and_abort_work(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "a.bin", 1000)
    begun = await registry.begin_version(_new(source))
    grants, expiry = await registry.renew_upload_grants(begun.upload_id, [], True)
    assert [g.sha256 for g in grants] == [sha256_of(source.read_bytes())]
    assert expiry == begun.expire_time
    await registry.abort_version(begun.upload_id)
    await registry.abort_version(begun.upload_id)  # aborting twice is fine
    with pytest.raises(NotFound, match="aborted, expired or never begun"):
        await registry.commit_version(begun.upload_id)

    stale = await registry.begin_version(_new(source))
    found = await registry._get(keys.upload(stale.upload_id), UploadRecord)
    assert found is not None
    expired = found[0].model_copy(update={"expire_time": found[0].create_time - timedelta(1)})
    await registry.store.write(keys.upload(stale.upload_id), dump(expired))
    with pytest.raises(NotFound, match="expired"):
        await registry.commit_version(stale.upload_id)
    assert await registry.sweep() == 1
    assert not await registry.store.exists(keys.upload(stale.upload_id))
    assert await registry.store.list_keys("refs/") == []
    assert not await registry.store.exists(keys.version("m", 1))


class _Died(Exception):  # noqa: N818 (a stand-in for a kill, not an error)
    """Stands for the registry process being killed at this point."""


async def _push(registry: Registry, source: Path) -> int:
    declared = _new(source)
    begun = await registry.begin_version(declared)
    parts = await _send(registry, begun.upload_id, source)
    digest = declared.artifacts[0].sha256
    version = await registry.commit_version(begun.upload_id, {digest: parts} if parts else None)
    return version.manifest.number


async def _delete_and_die_after_the_tombstone(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, number: int
) -> None:
    async def died(*_: object) -> tuple[int, int]:
        raise _Died

    with monkeypatch.context() as patch:
        patch.setattr(registry, "_finish_deletion", died)
        with pytest.raises(_Died):
            await registry.delete_version("m", number)


async def test_a_deletion_cut_short_is_finished_by_the_janitor_and_its_blob_collected(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = random_file(tmp_path / "weights.bin", 6 << 20)
    digest = sha256_of(source.read_bytes())
    assert await _push(registry, source) == 1
    await _delete_and_die_after_the_tombstone(registry, monkeypatch, 1)
    # Left half-done: @latest names the deleted version, and the blob is still stored.
    with pytest.raises(NotFound, match="points at version 1, which was deleted"):
        await registry.resolve("m")
    assert await registry.store.blob_size(digest) == 6 << 20

    assert await registry.finish_interrupted_collections() == 0, "too recent to be a dead one's"
    monkeypatch.setattr(collection, "GC_STALE_SECONDS", 0.0)
    assert await registry.finish_interrupted_collections() == 1

    with pytest.raises(NotFound, match="has no versions"):
        await registry.resolve("m")
    assert await registry.store.blob_size(digest) is None
    assert await registry.store.list_keys(f"parts/sha256/{digest}/") == []
    assert await registry.store.list_keys(keys.GC) == []
    assert await _push(registry, source) == 2


async def test_a_push_of_bytes_a_dead_deletion_held_succeeds_once_the_janitor_ran(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = random_file(tmp_path / "weights.bin", 6 << 20)
    digest = sha256_of(source.read_bytes())
    await _push(registry, source)
    await _push(registry, source)
    await _delete_and_die_after_the_tombstone(registry, monkeypatch, 2)
    monkeypatch.setattr(collection, "GC_WAIT_SECONDS", 0.2)

    retry = await registry.begin_version(_new(source))
    assert retry.present == (digest,)
    with pytest.raises(Aborted, match=f"blob {digest} is being garbage-collected"):
        await registry.commit_version(retry.upload_id)

    monkeypatch.setattr(collection, "GC_STALE_SECONDS", 0.0)
    assert await registry.finish_interrupted_collections() == 1
    version = await registry.commit_version(retry.upload_id)
    assert version.manifest.number == 3
    assert version.aliases == ("latest",)
    assert await registry.store.hash_blob(digest) == (digest, 6 << 20)


@pytest.mark.parametrize("store_kind", ["s3", "minio"], indirect=True)
async def test_parts_of_a_blob_whose_deletion_died_midway_are_removed_by_the_janitor(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = random_file(tmp_path / "weights.bin", 6 << 20)
    digest = sha256_of(source.read_bytes())
    await _push(registry, source)
    store: Any = registry.store

    def died(*_: object) -> None:
        raise _Died

    with monkeypatch.context() as patch:
        patch.setattr(store, "_remove_prefix", died)  # after the index went, before the parts
        with pytest.raises(_Died):
            await registry.delete_version("m", 1)
    assert await registry.store.blob_size(digest) is None
    assert await registry.store.list_keys(f"parts/sha256/{digest}/") != []

    assert await registry.finish_interrupted_collections() == 1
    assert await registry.store.list_keys(f"parts/sha256/{digest}/") == []
    assert await registry.store.list_keys(keys.DELETING) == []


async def test_collection_markers_of_an_earlier_release_or_unreadable_are_cleared(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "weights.bin", 1000)
    digest = sha256_of(source.read_bytes())
    await _push(registry, source)
    # Earlier releases kept one empty marker per blob, at the key that is now its prefix.
    await registry.store.write(keys.gc(digest).rstrip("/"), b"")

    assert await registry.finish_interrupted_collections() == 1
    assert await registry.store.list_keys(keys.GC) == []
    assert await registry.store.blob_size(digest) == 1000, "still used by version 1"
    # One whose content cannot be read is of unknown age: collected at once, and removed.
    await registry.store.write(keys.gc_marker(digest, "damaged"), b"{not json")
    assert await registry.finish_interrupted_collections() == 1
    assert await registry.store.list_keys(keys.GC) == []
    assert await registry.store.blob_size(digest) == 1000
    assert await registry.delete_version("m", 1) == (1, 1000)
