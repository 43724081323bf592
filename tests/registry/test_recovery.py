"""What crashes leave behind never blocks a retry: uploads completed but never verified, commits
interrupted after the manifest, expired uploads; plus renewing and aborting uploads."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from forgeline_kit.errors import FailedPrecondition, NotFound
from forgeline_registry.convert import upload_grant_to_pb
from forgeline_registry.manifests import ArtifactRecord, UploadRecord, dump, keys
from forgeline_registry.service import NewVersion, Registry
from forgeline_registry.storage.base import UploadedPart
from forgeline_registry.transfer import Transfers

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
    manifest = await registry._claim_number(record, etag)
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
