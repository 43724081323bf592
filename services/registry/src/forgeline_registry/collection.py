"""The deletion and collection part of the `Registry`: deleting versions and models
(tombstones first), collecting blobs nothing refers to, the wait a commit makes for a collection
of one of its blobs, and finishing the deletions and collections a registry that died left
half-done.

How a deletion, a collection and a commit racing them stay safe is in
`forgeline_registry.service`'s docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

from forgeline_kit.errors import Aborted, FailedPrecondition, Internal, NotFound
from forgeline_registry.manifests import (
    AliasRecord,
    CollectionMarker,
    ModelDeletion,
    ModelRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.registry_core import (
    LATEST,
    MAX_CAS_ATTEMPTS,
    RegistryCore,
    log,
    version_number,
)
from forgeline_registry.storage.base import PreconditionFailed
from forgeline_registry_client import names

__all__ = ["GC_STALE_SECONDS", "GC_WAIT_SECONDS", "Collection"]

#: How long a commit waits for a collection of one of its blobs to finish.
GC_WAIT_SECONDS = 10.0
#: A collection marker this old belongs to a registry that died (a collection takes seconds); the
#: janitor then finishes that collection, and the version deletion that started it.
GC_STALE_SECONDS = 300.0


class Collection(RegistryCore):
    """Deleting versions and models, and collecting the blobs they leave unreferenced."""

    # --- deleting models

    async def delete_model(self, name: str, force: bool = False) -> None:
        """Delete a model; with `force` its versions and aliases too.

        The model's record is tombstoned first: from then on the model reads as not found, and
        uploads and commits to it are refused (FAILED_PRECONDITION). Then its versions are
        deleted (their blobs collected), then its other records, and the model's record last:
        once this returns the name is free again. A model created again under it continues the
        old one's numbering, so ``model:N`` never names two different versions over time.
        Calling it again finishes a deletion that was interrupted (so does the janitor).
        """
        names.check_model_name(name, "name")
        found = await self._get(keys.model(name), ModelRecord)
        if found is None:
            raise NotFound(f"model {name!r} not found", field="name")
        record, etag = found
        if record.deletion is not None:
            force = force or record.deletion.force
        else:
            numbers = await self._numbers(name)
            if numbers and not force:
                raise FailedPrecondition(
                    f"model {name!r} still has {len(numbers)} version(s): delete them first, or "
                    "set force to delete them with the model",
                    field="force",
                )
            record = record.model_copy(
                update={"deletion": ModelDeletion(start_time=now(), force=force)}
            )
            try:
                etag = await self.store.write(keys.model(name), dump(record), if_match=etag)
            except PreconditionFailed:
                raise Aborted(f"model {name!r} changed meanwhile; retry") from None
        await self._finish_model_deletion(record, etag, force=force)

    async def _live_versions(self, model: str) -> list[tuple[VersionManifest, str]]:
        """Every manifest of the model that is not a tombstone, with its ETag."""
        listed = await self.store.list_keys(keys.versions(model))
        found = await asyncio.gather(*(self._get(k, VersionManifest) for k in listed))
        return [f for f in found if f is not None and not f[0].deleted]

    async def _finish_model_deletion(self, record: ModelRecord, etag: str, *, force: bool) -> None:
        """Everything a model's deletion does after its tombstone, each step safe to run again."""
        name = record.name
        for _ in range(MAX_CAS_ATTEMPTS):
            # Listed after the tombstone: every manifest created before it is here, and a commit
            # creating one later sees the tombstone and withdraws it.
            live = await self._live_versions(name)
            if not live:
                break
            if not force:
                # Versions committed before the tombstone: a deletion without force backs out.
                with contextlib.suppress(PreconditionFailed):
                    await self.store.write(
                        keys.model(name),
                        dump(record.model_copy(update={"deletion": None})),
                        if_match=etag,
                    )
                raise FailedPrecondition(
                    f"model {name!r} still has {len(live)} version(s): delete them first, or "
                    "set force to delete them with the model",
                    field="force",
                )
            for manifest, version_etag in live:
                # None: the commit that created it withdrew it meanwhile.
                await self._tombstone_version(manifest, version_etag)
        else:
            raise Aborted(f"versions of model {name!r} keep appearing; retry the deletion")
        listed = await self.store.list_keys(keys.model_dir(name))
        keep = {keys.model(name)}
        versions = [k for k in listed if k.startswith(keys.versions(name))]
        if versions:
            # The highest tombstone (with its marker) stays, so a model created again under this
            # name continues the numbering instead of handing out the old numbers again.
            highest = max(versions)  # zero-padded: key order is number order
            number = version_number(highest)
            found = await self._get(highest, VersionManifest)
            if found is not None and not found[0].deleted:
                # Created by a commit that died before it could see the tombstone and withdraw.
                await self._tombstone_version(*found)
            await self.store.write(keys.deleted_marker(name, number), b"")
            keep |= {highest, keys.deleted_marker(name, number)}
        for key in listed:
            if key not in keep:
                await self.store.delete(key)
        # Last: the name is free from here on.
        await self.store.delete(keys.model(name))
        log.info("model deleted", extra={"model": name})

    # --- deleting versions, collecting blobs

    async def delete_version(self, model: str, number: int, force: bool = False) -> tuple[int, int]:
        """Delete a version and collect the blobs nothing else uses: (blobs, bytes) freed."""
        names.check_model_name(model)
        manifest, etag = await self._manifest(model, number)
        aliases = await self._aliases(model)
        pinned = sorted(a for a, r in aliases.items() if r.version == number and a != LATEST)
        if pinned and not force:
            raise FailedPrecondition(
                f"version {model}:{number} is pointed at by alias(es) {', '.join(pinned)}: move "
                "them first, or set force to remove them",
                field="force",
            )
        outcome = await self._tombstone_version(manifest, etag)
        if outcome is None:
            raise Aborted(f"version {model}:{number} changed meanwhile; retry")
        collected, reclaimed = outcome
        log.info(
            "version deleted",
            extra={"model": model, "version": number, "collected_blobs": collected},
        )
        return collected, reclaimed

    async def _tombstone_version(
        self, manifest: VersionManifest, etag: str
    ) -> tuple[int, int] | None:
        """Delete a version whose manifest has `etag`: (blobs, bytes) collected, or None when
        the manifest changed or went meanwhile (nothing done)."""
        model, number = manifest.model, manifest.number
        # The blobs' collection markers go first: a registry that dies anywhere after the
        # tombstone leaves them behind, and the janitor finishes the deletion from them.
        collection = uuid.uuid4().hex
        pending = CollectionMarker(
            start_time=now(), model=model, version=number, upload_id=manifest.upload_id
        )
        for digest in manifest.blob_digests:
            await self.store.write(keys.gc_marker(digest, collection), dump(pending))
        try:
            await self.store.write(
                keys.version(model, number),
                dump(manifest.model_copy(update={"deleted": True})),
                if_match=etag,
            )
        except PreconditionFailed:
            for digest in manifest.blob_digests:
                await self.store.delete(keys.gc_marker(digest, collection))
            return None
        return await self._finish_deletion(manifest, collection)

    async def _finish_deletion(self, manifest: VersionManifest, collection: str) -> tuple[int, int]:
        """Everything a deletion does after the tombstone, each step safe to run again: the
        janitor runs it for a deletion whose registry died. (blobs, bytes) collected."""
        model, number = manifest.model, manifest.number
        await self.store.write(keys.deleted_marker(model, number), b"")
        aliases = await self._aliases(model)
        for alias, record in aliases.items():
            if record.version == number and alias != LATEST:
                await self.store.delete(keys.alias(model, alias))
        remaining = await self._numbers(model)

        def move_latest(current: AliasRecord | None) -> AliasRecord | None:
            if current is None or current.version != number or not remaining:
                return None
            return AliasRecord(version=remaining[-1], update_time=now())

        await self._cas(keys.alias(model, LATEST), AliasRecord, move_latest)
        if not remaining:
            await self.store.delete(keys.alias(model, LATEST))
        for parent in manifest.lineage.parents:
            await self.store.delete(keys.child(parent.model, parent.version, model, number))
        # Its children keep their own record of it; only the reverse index goes, so that a model
        # created again under the same name does not inherit it.
        for key in await self.store.list_keys(keys.children(model, number)):
            await self.store.delete(key)
        collected = reclaimed = 0
        for digest in manifest.blob_digests:
            await self.store.delete(keys.ref(digest, manifest.upload_id))
            freed = await self._collect(digest, keys.gc_marker(digest, collection))
            if freed is not None:
                collected += 1
                reclaimed += freed
        return collected, reclaimed

    async def _collect(self, digest: str, marker: str | None = None) -> int | None:
        """Remove the blob if no upload refers to it; its size if removed.

        `marker` is this collection's marker if written already (by a deletion); otherwise one
        is written here. Each collection has a marker of its own, so one finishing never uncovers
        another still deleting. The marker stays if the process dies, holding off commits of the
        blob until the janitor finishes the collection.
        """
        if marker is None:
            marker = keys.gc_marker(digest, uuid.uuid4().hex)
            await self.store.write(marker, dump(CollectionMarker(start_time=now())))
        try:
            if await self.store.list_keys(keys.refs(digest)):
                return None
            size = await self.store.blob_size(digest)
            await self.store.delete(keys.verified(digest))
            await self.store.delete_blob(digest)
            return size or 0
        finally:
            await self.store.delete(marker)

    async def _wait_for_collection(self, digest: str) -> None:
        deadline = asyncio.get_running_loop().time() + GC_WAIT_SECONDS
        delay = 0.02
        while await self.store.list_keys(keys.gc(digest)):
            if asyncio.get_running_loop().time() > deadline:
                raise Aborted(f"blob {digest} is being garbage-collected by another request; retry")
            await asyncio.sleep(delay)  # backoff between polls of a real marker
            delay = min(delay * 2, 0.5)

    # --- housekeeping

    async def finish_interrupted_collections(self) -> int:
        """Finish the collections (and the version deletions that started them) whose registry
        died, judged by markers older than `GC_STALE_SECONDS`; how many."""
        finished = 0
        cutoff = now() - timedelta(seconds=GC_STALE_SECONDS)
        for key in await self.store.list_keys(keys.GC):
            digest, _, collection = key.removeprefix(keys.GC).partition("/")
            if not collection:
                # An earlier release's marker, one per blob, holding nothing: run it again.
                await self.store.delete(key)
                await self._collect(digest)
                finished += 1
                continue
            marker = await self._collection_marker(key)
            if marker is None or marker.start_time > cutoff:
                continue  # finished meanwhile, or still running
            deleted = None
            if marker.model:
                found = await self._get(keys.version(marker.model, marker.version), VersionManifest)
                deleted = found[0] if found is not None else None
            if deleted is not None and deleted.deleted and deleted.upload_id == marker.upload_id:
                # Collects every blob of that deletion, removing their markers.
                await self._finish_deletion(deleted, collection)
                log.info(
                    "finished an interrupted deletion",
                    extra={"model": marker.model, "version": marker.version},
                )
            elif marker.model:
                await self.store.delete(key)  # the deletion never happened: nothing to collect
            else:
                await self._collect(digest, key)
                log.info("finished an interrupted collection", extra={"sha256": digest})
            finished += 1
        finished += await self.store.finish_interrupted_deletions()
        return finished

    async def finish_interrupted_model_deletions(self) -> int:
        """Finish the model deletions whose registry died, judged by tombstones older than
        `GC_STALE_SECONDS`; how many."""
        finished = 0
        cutoff = now() - timedelta(seconds=GC_STALE_SECONDS)
        for segment in await self.store.list_children("models/"):
            found = await self._get(keys.model(keys.model_from_dir(segment)), ModelRecord)
            if found is None or found[0].deletion is None:
                continue
            if found[0].deletion.start_time > cutoff:
                continue  # still running
            # FailedPrecondition: a deletion without force had to back out; the model stays.
            with contextlib.suppress(FailedPrecondition):
                await self._finish_model_deletion(*found, force=found[0].deletion.force)
            log.info("finished an interrupted model deletion", extra={"model": found[0].name})
            finished += 1
        return finished

    async def _collection_marker(self, key: str) -> CollectionMarker | None:
        """The marker at `key`, None if gone; one that cannot be read counts as of unknown age
        and version (collecting is safe whatever it was: references are checked first)."""
        try:
            found = await self._get(key, CollectionMarker)
        except Internal:
            return CollectionMarker(start_time=datetime.min.replace(tzinfo=UTC))
        return found[0] if found is not None else None
