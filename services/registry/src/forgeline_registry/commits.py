"""The commit part of the `Registry`: verifying an upload's blobs, claiming the model's next
version number by creating the manifest, finishing the commit (lineage, ``latest``, the request
id), withdrawing it when its model is being deleted, and sweeping expired uploads (finishing any
whose manifest was written).

Why a commit is never lost, repeated or landed in a deleted model is in
`forgeline_registry.service`'s docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from forgeline_kit.errors import Aborted, FailedPrecondition
from forgeline_registry.collection import Collection
from forgeline_registry.manifests import (
    AliasRecord,
    BlobUploadState,
    ChildRecord,
    ModelRecord,
    RequestRecord,
    UploadRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.registry_core import (
    LATEST,
    MAX_CAS_ATTEMPTS,
    VersionView,
    log,
    version_number,
)
from forgeline_registry.storage.base import BlobIncomplete, PreconditionFailed, UploadedPart
from forgeline_registry.uploads import Uploads

__all__ = ["Commits"]


class Commits(Uploads, Collection):
    """Committing uploads as versions; built on the uploads it commits, and on collection
    because a commit that lost a race with its model's deletion is deleted like any version,
    and waits out a collection of its blobs."""

    async def commit_version(
        self, upload_id: str, parts: dict[str, list[UploadedPart]] | None = None
    ) -> VersionView:
        """Verify an upload's blobs and make it the model's next version."""
        async with self._lock(self._upload_locks, upload_id):
            try:
                return await self._commit(upload_id, parts or {})
            finally:
                self._upload_locks.pop(upload_id, None)

    async def _commit(self, upload_id: str, parts: dict[str, list[UploadedPart]]) -> VersionView:
        record, etag = await self._open_upload(upload_id)
        if record.state == "committed" and record.version is not None:
            return await self.get_version(record.model, record.version)
        if record.claiming is not None:
            claimed = await self._get(keys.version(record.model, record.claiming), VersionManifest)
            if claimed is not None and claimed[0].upload_id == upload_id:
                return await self._resume_claimed(record, claimed)
        # Early, so that nothing is verified for a model being deleted; the check that counts
        # comes after the manifest is created (see `forgeline_registry.service`).
        await self._refuse_if_model_gone(
            record, await self._get(keys.model(record.model), ModelRecord)
        )
        await self._verify_blobs(record, parts)
        async with self._lock(self._model_locks, record.model):
            claimed = await self._claim_number(record, etag)
        return await self._resume_claimed(record, claimed)

    async def _resume_claimed(
        self, record: UploadRecord, claimed: tuple[VersionManifest, str]
    ) -> VersionView:
        """Finish a commit whose manifest exists, unless the model is being deleted or gone:
        then withdraw the manifest and refuse. Read after the manifest was created, so a
        deletion that listed the versions before missed nothing (see
        `forgeline_registry.service`)."""
        owner = await self._get(keys.model(record.model), ModelRecord)
        if self._model_gone(record, owner):
            if not claimed[0].deleted:
                await self._withdraw(record, *claimed)
            await self._refuse_if_model_gone(record, owner)
        return await self._finish_commit(record, claimed[0])

    @staticmethod
    def _model_gone(record: UploadRecord, found: tuple[ModelRecord, str] | None) -> bool:
        """Whether the model the upload was begun for is being deleted, or gone (perhaps
        created again since, as another model)."""
        if found is None or found[0].deletion is not None:
            return True
        return record.model_create_time not in (None, found[0].create_time)

    async def _refuse_if_model_gone(
        self, record: UploadRecord, found: tuple[ModelRecord, str] | None
    ) -> None:
        if not self._model_gone(record, found):
            return
        await self._discard_upload(record)
        raise FailedPrecondition(
            f"model {record.model!r} was deleted while this version was being committed; "
            "nothing was stored and the upload is discarded: push the version again (with "
            "create_model) once the deletion has finished",
            field="upload_id",
        )

    async def _withdraw(self, record: UploadRecord, manifest: VersionManifest, etag: str) -> None:
        """Undo a manifest this commit created in a model that is being deleted: deleted like
        any version (tombstone, then references and blobs), so whichever of the commit and the
        model's deletion gets to it first does the work, and the other finds it done."""
        outcome = await self._tombstone_version(manifest, etag)
        if outcome is None:
            # The model's deletion got to the manifest first: it collects the blobs of a version
            # it deleted, but one it removed without seeing leaves them to this commit.
            for digest in manifest.blob_digests:
                await self.store.delete(keys.ref(digest, record.upload_id))
                await self._collect(digest)
            return
        log.info(
            "commit withdrawn: its model is being deleted",
            extra={"model": manifest.model, "version": manifest.number},
        )

    async def _verify_blobs(
        self, record: UploadRecord, parts: dict[str, list[UploadedPart]]
    ) -> None:
        states = {s.sha256: s for s in record.blobs}
        paths: dict[str, str] = {}
        for artifact in record.artifacts:
            paths.setdefault(artifact.sha256, artifact.path)
        sizes = {a.sha256: a.size_bytes for a in record.artifacts}
        limit = asyncio.Semaphore(self.settings.verify_concurrency)

        async def verify(digest: str) -> None:
            async with limit:
                await self._ensure_blob(
                    record,
                    digest,
                    sizes[digest],
                    paths[digest],
                    states.get(digest),
                    parts.get(digest),
                )

        results = await asyncio.gather(*(verify(d) for d in sizes), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if any(isinstance(f, _DigestMismatch) for f in failures):
                await self._discard_upload(record)
            first = next((f for f in failures if isinstance(f, _DigestMismatch)), failures[0])
            if isinstance(first, _DigestMismatch):
                raise FailedPrecondition(str(first), field=first.field)
            raise first

    async def _ensure_blob(
        self,
        record: UploadRecord,
        digest: str,
        size: int,
        path: str,
        state: BlobUploadState | None,
        parts: list[UploadedPart] | None,
    ) -> None:
        field_name = f"artifacts[{[a.path for a in record.artifacts].index(path)}]"
        # The reference first, then the check for a collection: see `forgeline_registry.service`.
        await self.store.write(keys.ref(digest, record.upload_id), b"")
        await self._wait_for_collection(digest)
        # A blob this upload sends is verified below whatever happened meanwhile; one that was
        # present at BeginVersion is verified only if nobody has verified it before.
        if (
            state is None
            and await self.store.exists(keys.verified(digest))
            and await self.store.blob_size(digest) == size
        ):
            return
        if state is not None:
            try:
                await self.store.finish_blob_upload(state, parts)
            except BlobIncomplete as exc:
                raise FailedPrecondition(
                    f"artifact {path!r} is not fully uploaded: {exc}; upload it, then commit again",
                    field=field_name,
                ) from None
            arrived = await self.store.hash_uploaded(state)
        else:
            arrived = await self.store.hash_blob(digest)
        if arrived is None:
            raise FailedPrecondition(
                f"artifact {path!r} was not uploaded: send its bytes with the upload grant, then "
                "commit again",
                field=field_name,
            )
        if arrived != (digest, size):
            got_digest, got_size = arrived
            if state is not None:
                await self.store.discard_blob_upload(state, delete_arrived=True)
            else:
                await self.store.delete_blob(digest)
            raise _DigestMismatch(
                f"artifact {path!r}: the uploaded bytes have sha256 {got_digest} and size "
                f"{got_size}, not the declared sha256 {digest} and size {size}; nothing was "
                "stored: begin the version again",
                field=f"{field_name}.sha256",
            )
        if state is not None:
            await self.store.publish_blob(state)
        await self.store.write(keys.verified(digest), b"")

    async def _next_number(self, model: str) -> int:
        """One past every number the model's name ever used: its version keys (tombstones
        included) and its deleted-version markers, so that a number is never handed out twice,
        not even to a model created again under a deleted one's name."""
        listed, deleted = await asyncio.gather(
            self.store.list_children(keys.versions(model)),
            self.store.list_children(keys.deleted(model)),
        )
        used = [version_number(k) for k in listed] + [int(n) for n in deleted if n.isdigit()]
        return max(used, default=0) + 1

    async def _claim_number(self, record: UploadRecord, etag: str) -> tuple[VersionManifest, str]:
        """Create the manifest under the next free number: the manifest and its ETag."""
        number = await self._next_number(record.model)
        for _ in range(MAX_CAS_ATTEMPTS):
            claiming = record.model_copy(update={"claiming": number})
            try:
                etag = await self.store.write(
                    keys.upload(record.upload_id), dump(claiming), if_match=etag
                )
            except PreconditionFailed:
                raise Aborted(
                    f"upload {record.upload_id} is being committed by another request; retry "
                    "to get its result"
                ) from None
            record = claiming
            manifest = VersionManifest(
                model=record.model,
                number=number,
                kind=record.kind,
                artifacts=record.artifacts,
                lineage=record.lineage,
                labels=record.labels,
                description=record.description,
                create_time=now(),
                upload_id=record.upload_id,
            )
            try:
                created = await self.store.write(
                    keys.version(record.model, number), dump(manifest), if_none_match=True
                )
            except PreconditionFailed:
                number += 1
                continue
            return manifest, created
        raise Aborted(f"too many concurrent commits to model {record.model!r}; retry")

    async def _finish_commit(self, record: UploadRecord, manifest: VersionManifest) -> VersionView:
        number = manifest.number
        for parent in manifest.lineage.parents:
            child = ChildRecord(relation=parent.relation)
            await self.store.write(
                keys.child(parent.model, parent.version, manifest.model, number), dump(child)
            )

        def forward(current: AliasRecord | None) -> AliasRecord | None:
            if current is not None and current.version >= number:
                return None
            return AliasRecord(version=number, update_time=now())

        await self._cas(keys.alias(manifest.model, LATEST), AliasRecord, forward)
        if record.request_id:
            link = RequestRecord(upload_id=record.upload_id, version=number)
            await self.store.write(keys.request(record.model, record.request_id), dump(link))
        done = record.model_copy(
            update={
                "state": "committed",
                "version": number,
                "claiming": number,
                "expire_time": now() + timedelta(seconds=self.settings.request_retention_seconds),
                "blobs": (),
            }
        )
        await self.store.write(keys.upload(record.upload_id), dump(done))
        log.info(
            "version committed",
            extra={"model": manifest.model, "version": number, "upload_id": record.upload_id},
        )
        return await self._view(manifest)

    # --- housekeeping

    async def sweep(self) -> int:
        """Discard expired uploads (finishing any whose manifest was written); how many."""
        swept = 0
        for key in await self.store.list_keys("uploads/"):
            found = await self._get(key, UploadRecord)
            if found is None or found[0].expire_time > now():
                continue
            record = found[0]
            if record.state == "open" and record.claiming is not None:
                claimed = await self._get(
                    keys.version(record.model, record.claiming), VersionManifest
                )
                if claimed is not None and claimed[0].upload_id == record.upload_id:
                    # Withdrawn and discarded instead when its model was deleted meanwhile.
                    with contextlib.suppress(FailedPrecondition):
                        await self._resume_claimed(record, claimed)
                    continue
            if record.state == "open":
                await self._discard_upload(record)
            else:
                await self.store.delete(key)
            swept += 1
        return swept


class _DigestMismatch(Exception):  # noqa: N818
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field
