"""Deleting a whole model: tombstoned first, so a commit racing the deletion is refused and
nothing of the model stays visible; the name can be used again once the deletion has finished.

Each race is made deterministic by pausing one side at a chosen write to the store (the writes
are what the other side can observe), never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from forgeline_kit.errors import FailedPrecondition, NotFound
from forgeline_registry.convert import upload_grant_to_pb
from forgeline_registry.manifests import (
    ArtifactRecord,
    ModelDeletion,
    ModelRecord,
    UploadRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.service import NewVersion, Registry
from forgeline_registry.storage.base import ObjectStore, UploadedPart
from forgeline_registry_client.transfer import Transfers

from .conftest import StoreConfig
from .helpers import random_file, sha256_of

MODEL = "acme/doomed"


@pytest.fixture
async def registry(store_kind: StoreConfig) -> Registry:
    store = store_kind.store()
    await store.ensure_ready()
    return Registry(store, store_kind.settings(upload_ttl_seconds=60))


class Pause:
    """Holds the caller of `ObjectStore.write` right after the first write `matches` selects
    (the write has happened): `reached` is set then, and the caller waits for `resume`."""

    def __init__(
        self,
        store: ObjectStore,
        monkeypatch: pytest.MonkeyPatch,
        matches: Callable[[str, bytes], bool],
    ) -> None:
        self.reached = asyncio.Event()
        self.resume = asyncio.Event()
        real = store.write

        async def write(
            key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
        ) -> str:
            etag = await real(key, data, if_none_match=if_none_match, if_match=if_match)
            if not self.reached.is_set() and matches(key, data):
                self.reached.set()
                await self.resume.wait()
            return etag

        monkeypatch.setattr(store, "write", write)


def _tombstone_of(model: str) -> Callable[[str, bytes], bool]:
    def matches(key: str, data: bytes) -> bool:
        return (
            key == keys.model(model) and ModelRecord.model_validate_json(data).deletion is not None
        )

    return matches


def _new(path: Path, model: str = MODEL) -> NewVersion:
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
    )


async def _send(registry: Registry, upload_id: str, source: Path) -> dict[str, list[UploadedPart]]:
    """Upload every blob the upload misses from `source`; the parts sent, by digest."""
    found = await registry._get(keys.upload(upload_id), UploadRecord)
    assert found is not None
    sent: dict[str, list[UploadedPart]] = {}
    transfers = Transfers()
    try:
        for state in found[0].blobs:
            grant = await registry.store.upload_grant(
                state, accept_local_files=True, expire_time=found[0].expire_time
            )
            parts = await asyncio.to_thread(transfers.upload, upload_grant_to_pb(grant), source)
            sent[state.sha256] = [UploadedPart(p.part_number, p.etag) for p in parts]
    finally:
        transfers.close()
    return sent


async def _push(registry: Registry, source: Path, model: str = MODEL) -> int:
    begun = await registry.begin_version(_new(source, model))
    parts = await _send(registry, begun.upload_id, source)
    return (await registry.commit_version(begun.upload_id, parts)).manifest.number


async def _assert_gone(registry: Registry, model: str = MODEL) -> None:
    """Nothing of the model is visible: not the model, its versions, aliases or listing."""
    with pytest.raises(NotFound, match=f"model '{model}' not found"):
        await registry.get_model(model)
    with pytest.raises(NotFound, match="not found"):
        await registry.get_version(model, 1)
    with pytest.raises(NotFound, match="not found"):
        await registry.resolve(model)
    with pytest.raises(NotFound, match="not found"):
        await registry.list_versions(model)
    listed, _ = await registry.list_models()
    assert model not in [view.record.name for view in listed]


async def _assert_collected(registry: Registry, digest: str) -> None:
    """The blob and everything that kept it are gone."""
    store = registry.store
    assert await store.blob_size(digest) is None
    assert await store.list_keys(keys.refs(digest)) == []
    assert await store.list_keys(keys.gc(digest)) == []


async def test_a_commit_while_the_deletion_is_under_way_is_refused_and_nothing_shows(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = random_file(tmp_path / "v1.bin", 4096)
    assert await _push(registry, first) == 1
    racing = random_file(tmp_path / "racing.bin", 1 << 20)
    begun = await registry.begin_version(_new(racing))
    parts = await _send(registry, begun.upload_id, racing)

    pause = Pause(registry.store, monkeypatch, _tombstone_of(MODEL))
    deletion = asyncio.create_task(registry.delete_model(MODEL, force=True))
    await pause.reached.wait()
    # The deletion has written its tombstone and deleted nothing yet.
    assert await registry.store.exists(keys.version(MODEL, 1))
    await _assert_gone(registry)
    with pytest.raises(FailedPrecondition, match="was deleted while this version was being"):
        await registry.commit_version(begun.upload_id, parts)
    with pytest.raises(FailedPrecondition, match="is being deleted"):
        await registry.begin_version(_new(racing))
    with pytest.raises(FailedPrecondition, match="is being deleted"):
        await registry.create_model(MODEL)
    pause.resume.set()
    await deletion

    await _assert_gone(registry)
    await _assert_collected(registry, sha256_of(first.read_bytes()))
    await _assert_collected(registry, sha256_of(racing.read_bytes()))
    assert not await registry.store.exists(keys.upload(begun.upload_id))
    assert not await registry.store.exists(keys.model(MODEL))
    # The name is free again; the numbering goes on, so MODEL:1 never names other content.
    assert await _push(registry, random_file(tmp_path / "again.bin", 2048)) == 2
    assert (await registry.get_model(MODEL)).version_count == 1


async def test_a_commit_that_checked_before_the_deletion_withdraws_its_manifest(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = random_file(tmp_path / "racing.bin", 1 << 20)
    digest = sha256_of(racing.read_bytes())
    begun = await registry.begin_version(_new(racing))
    parts = await _send(registry, begun.upload_id, racing)

    # The commit is held once it passed its first look at the model (its blob reference is the
    # next write); the whole deletion runs meanwhile, then the commit creates its manifest.
    pause = Pause(
        registry.store, monkeypatch, lambda key, _: key == keys.ref(digest, begun.upload_id)
    )
    commit = asyncio.create_task(registry.commit_version(begun.upload_id, parts))
    await pause.reached.wait()
    await registry.delete_model(MODEL, force=True)
    assert not await registry.store.exists(keys.model(MODEL))
    pause.resume.set()
    with pytest.raises(FailedPrecondition, match="was deleted while this version was being"):
        await commit

    await _assert_gone(registry)
    await _assert_collected(registry, digest)
    withdrawn = await registry._get(keys.version(MODEL, 1), VersionManifest)
    assert withdrawn is not None
    assert withdrawn[0].deleted  # a tombstone keeps the number
    assert not await registry.store.exists(keys.upload(begun.upload_id))
    assert await _push(registry, random_file(tmp_path / "again.bin", 2048)) == 2


async def test_a_manifest_created_under_the_deletion_is_deleted_with_the_model(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = random_file(tmp_path / "racing.bin", 1 << 20)
    digest = sha256_of(racing.read_bytes())
    begun = await registry.begin_version(_new(racing))
    parts = await _send(registry, begun.upload_id, racing)

    # The commit is held right after creating its manifest, before it looks at the model again:
    # the deletion, which lists versions after its tombstone, finds and deletes that version.
    pause = Pause(registry.store, monkeypatch, lambda key, _: key == keys.version(MODEL, 1))
    commit = asyncio.create_task(registry.commit_version(begun.upload_id, parts))
    await pause.reached.wait()
    await registry.delete_model(MODEL, force=True)
    pause.resume.set()
    with pytest.raises(FailedPrecondition, match="was deleted while this version was being"):
        await commit

    await _assert_gone(registry)
    await _assert_collected(registry, digest)
    assert await _push(registry, random_file(tmp_path / "again.bin", 2048)) == 2


async def test_a_deletion_without_force_backs_out_when_a_version_was_committed_first(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.create_model(MODEL)
    source = random_file(tmp_path / "v1.bin", 4096)
    begun = await registry.begin_version(_new(source))
    parts = await _send(registry, begun.upload_id, source)
    # The deletion found no versions, then a commit landed before its tombstone was written.
    real_numbers = registry._numbers

    async def numbers_then_commit(model: str) -> list[int]:
        found = await real_numbers(model)
        await registry.commit_version(begun.upload_id, parts)
        return found

    monkeypatch.setattr(registry, "_numbers", numbers_then_commit)
    with pytest.raises(FailedPrecondition, match="still has 1 version"):
        await registry.delete_model(MODEL)
    monkeypatch.undo()
    assert (await registry.get_model(MODEL)).version_count == 1
    assert (await registry.get_version(MODEL, 1)).manifest.upload_id == begun.upload_id


async def test_an_interrupted_deletion_is_finished_by_a_retry_or_the_janitor(
    registry: Registry, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "v1.bin", 4096)
    digest = sha256_of(source.read_bytes())
    await _push(registry, source)
    # What a registry killed right after writing the tombstone leaves, an hour ago.
    found = await registry._get(keys.model(MODEL), ModelRecord)
    assert found is not None
    old = now() - timedelta(hours=1)
    tombstoned = found[0].model_copy(update={"deletion": ModelDeletion(start_time=old, force=True)})
    await registry.store.write(keys.model(MODEL), dump(tombstoned), if_match=found[1])
    await _assert_gone(registry)

    assert await registry.finish_interrupted_model_deletions() == 1
    await _assert_gone(registry)
    await _assert_collected(registry, digest)
    assert not await registry.store.exists(keys.model(MODEL))
    assert await registry.finish_interrupted_model_deletions() == 0
    # A retry of the deletion itself answers NotFound once it is done.
    with pytest.raises(NotFound):
        await registry.delete_model(MODEL, force=True)
