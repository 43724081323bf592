"""The uploads part of the `Registry`: declaring a version (BeginVersion: checks, idempotency by
request id, grants for the blobs the store lacks), renewing grants, aborting and discarding
uploads, and grants to download a version's artifacts.

Committing an upload is `commits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from forgeline_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from forgeline_registry.catalogue import Catalogue
from forgeline_registry.manifests import (
    ArtifactRecord,
    BlobUploadState,
    LineageRecord,
    ModelRecord,
    RequestRecord,
    UploadRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.registry_core import MAX_CAS_ATTEMPTS, VersionView, log
from forgeline_registry.storage.base import (
    DownloadGrantSpec,
    PreconditionFailed,
    UploadGrantSpec,
)
from forgeline_registry_client import names
from forgeline_registry_client.importer import guess_media_type

__all__ = ["BeginResult", "NewVersion", "Uploads"]

G = TypeVar("G", UploadGrantSpec, DownloadGrantSpec)


@dataclass(frozen=True)
class NewVersion:
    """What BeginVersion declares."""

    model: str
    kind: str
    artifacts: tuple[ArtifactRecord, ...]
    lineage: LineageRecord = field(default_factory=LineageRecord)
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    request_id: str = ""
    create_model: bool = False
    accept_local_files: bool = False
    part_size_bytes: int = 0


@dataclass(frozen=True)
class BeginResult:
    """What BeginVersion answers."""

    upload_id: str = ""
    expire_time: datetime | None = None
    grants: tuple[UploadGrantSpec, ...] = ()
    present: tuple[str, ...] = ()
    committed: VersionView | None = None


class Uploads(Catalogue):
    """Uploads from BeginVersion until they are committed, aborted or expire; built on the
    catalogue because BeginVersion may create the model, and answers a repeated request with
    the version it committed."""

    # --- uploads

    def _check_new_version(self, new: NewVersion) -> None:
        names.check_model_name(new.model, "model")
        if new.kind in ("", "VERSION_KIND_UNSPECIFIED"):
            raise InvalidArgument("kind is not set: say what the version is", field="kind")
        if not new.artifacts:
            raise InvalidArgument("a version needs at least one artifact", field="artifacts")
        seen: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for index, artifact in enumerate(new.artifacts):
            where = f"artifacts[{index}]"
            names.check_artifact_path(artifact.path, f"{where}.path")
            names.check_sha256(artifact.sha256, f"{where}.sha256")
            if artifact.kind in ("", "ARTIFACT_KIND_UNSPECIFIED"):
                raise InvalidArgument(f"{where}.kind is not set", field=f"{where}.kind")
            if artifact.size_bytes < 0:
                raise InvalidArgument(
                    f"{where}.size_bytes is negative", field=f"{where}.size_bytes"
                )
            if artifact.path in seen:
                raise InvalidArgument(
                    f"{where}.path {artifact.path!r} repeats artifacts[{seen[artifact.path]}]",
                    field=f"{where}.path",
                )
            seen[artifact.path] = index
            if sizes.setdefault(artifact.sha256, artifact.size_bytes) != artifact.size_bytes:
                raise InvalidArgument(
                    f"{where}: the same sha256 is declared with two different sizes",
                    field=f"{where}.size_bytes",
                )
        names.check_labels(new.labels, "labels")
        if len(new.request_id) > 256:
            raise InvalidArgument("request_id is longer than 256 characters", field="request_id")
        for index, parent in enumerate(new.lineage.parents):
            if parent.relation in ("", "RELATION_UNSPECIFIED"):
                raise InvalidArgument(
                    f"lineage.parents[{index}].relation is not set",
                    field=f"lineage.parents[{index}].relation",
                )
        if new.lineage.provenance is not None:
            self._check_provenance(new)

    @staticmethod
    def _check_provenance(new: NewVersion) -> None:
        """A hub import's provenance names a repository and only files of the version, each with
        the artifact's digest: what the registry verifies at commit is what the hub served."""
        provenance = new.lineage.provenance
        assert provenance is not None
        for name in ("hub", "repo_id"):
            if not getattr(provenance, name):
                raise InvalidArgument(
                    f"lineage.provenance.{name} is empty", field=f"lineage.provenance.{name}"
                )
        digests = {a.path: a.sha256 for a in new.artifacts}
        for index, file in enumerate(provenance.files):
            where = f"lineage.provenance.files[{index}]"
            if file.path not in digests:
                raise InvalidArgument(
                    f"{where}.path {file.path!r} is not an artifact of the version",
                    field=f"{where}.path",
                )
            if file.sha256 != digests[file.path]:
                raise InvalidArgument(
                    f"{where}.sha256 differs from the digest of artifact {file.path!r}",
                    field=f"{where}.sha256",
                )

    async def begin_version(self, new: NewVersion) -> BeginResult:
        """Declare a version's artifacts and get grants for the blobs the store lacks."""
        self._check_new_version(new)
        for index, parent in enumerate(new.lineage.parents):
            field_name = f"lineage.parents[{index}].version"
            manifest = await self._get(keys.version(parent.model, parent.version), VersionManifest)
            if manifest is None or manifest[0].deleted:
                raise NotFound(
                    f"parent version {parent.model}:{parent.version} not found", field=field_name
                )
        owner = await self._get(keys.model(new.model), ModelRecord)
        if owner is None:
            if not new.create_model:
                raise NotFound(
                    f"model {new.model!r} not found (set create_model to create it)",
                    field="model",
                )
            with contextlib.suppress(AlreadyExists):
                await self.create_model(new.model)
            owner = await self._get(keys.model(new.model), ModelRecord)
        model = self._writable(new.model, owner)
        if not new.request_id:
            record = await self._new_upload(new, model)
            return await self._begin_result(record, new.accept_local_files)
        request_key = keys.request(new.model, new.request_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self._get(request_key, RequestRecord)
            if found is not None:
                request = found[0]
                if request.version is not None:
                    view = await self.get_version(new.model, request.version)
                    return BeginResult(committed=view)
                upload = await self._get(keys.upload(request.upload_id), UploadRecord)
                if upload is not None and upload[0].expire_time > now():
                    if upload[0].state == "committed" and upload[0].version is not None:
                        view = await self.get_version(new.model, upload[0].version)
                        return BeginResult(committed=view)
                    return await self._begin_result(upload[0], new.accept_local_files)
            record = await self._new_upload(new, model)
            link = dump(RequestRecord(upload_id=record.upload_id))
            try:
                if found is None:
                    await self.store.write(request_key, link, if_none_match=True)
                else:
                    await self.store.write(request_key, link, if_match=found[1])
            except PreconditionFailed:
                await self._discard_upload(record)
                continue
            return await self._begin_result(record, new.accept_local_files)
        raise Aborted("request_id is being used by concurrent calls; retry")

    @staticmethod
    def _writable(name: str, found: tuple[ModelRecord, str] | None) -> ModelRecord:
        """The model's record, if versions may be added to it now."""
        if found is not None and found[0].deletion is not None:
            raise FailedPrecondition(
                f"model {name!r} is being deleted: nothing can be added to it; once the deletion "
                "has finished, push again (with create_model) to create the model anew",
                field="model",
            )
        if found is None:
            raise NotFound(
                f"model {name!r} not found (set create_model to create it)", field="model"
            )
        return found[0]

    async def _new_upload(self, new: NewVersion, model: ModelRecord) -> UploadRecord:
        upload_id = "up-" + uuid.uuid4().hex
        stamp = now()
        part_size = new.part_size_bytes or self.settings.part_size_bytes
        sizes = {a.sha256: a.size_bytes for a in new.artifacts}
        present = await asyncio.gather(*(self._blob_present(d) for d in sizes))
        states = []
        for (digest, size), there in zip(sizes.items(), present, strict=True):
            if not there:
                states.append(
                    await self.store.start_blob_upload(upload_id, digest, size, part_size)
                )
        record = UploadRecord(
            upload_id=upload_id,
            model=new.model,
            kind=new.kind,
            artifacts=tuple(
                a if a.media_type else a.model_copy(update={"media_type": guess_media_type(a.path)})
                for a in new.artifacts
            ),
            lineage=new.lineage,
            labels=new.labels,
            description=new.description,
            request_id=new.request_id,
            create_time=stamp,
            expire_time=stamp + timedelta(seconds=self.settings.upload_ttl_seconds),
            blobs=tuple(states),
            model_create_time=model.create_time,
        )
        await self.store.write(keys.upload(upload_id), dump(record), if_none_match=True)
        log.info(
            "upload begun",
            extra={"model": new.model, "upload_id": upload_id, "missing_blobs": len(states)},
        )
        return record

    async def _blob_present(self, digest: str) -> bool:
        # A blob that exists but was never verified (its commit was interrupted) counts as
        # present too: it cannot be uploaded over, and the commit verifies it.
        if await self.store.exists(keys.verified(digest)):
            return True
        return await self.store.blob_size(digest) is not None

    def _grant_expiry(self, record: UploadRecord) -> datetime:
        return min(record.expire_time, now() + timedelta(seconds=self.settings.grant_ttl_seconds))

    def _local_files(self, accept_local_files: bool) -> bool:
        """Whether grants may be local files: the client asked, and the driver is the
        filesystem's (a host path from any other store would be meaningless, or a leak)."""
        return accept_local_files and self.store.grants_local_files

    def _checked(self, grant: G, local_files: bool) -> G:
        if grant.local_path and not local_files:
            # A driver bug, never a client error: no path of this host leaves unasked.
            raise Internal("the storage driver offered a local-file grant nobody asked for")
        return grant

    async def _upload_grant(
        self, state: BlobUploadState, accept_local_files: bool, expiry: datetime
    ) -> UploadGrantSpec:
        local = self._local_files(accept_local_files)
        grant = await self.store.upload_grant(state, accept_local_files=local, expire_time=expiry)
        return self._checked(grant, local)

    async def _begin_result(self, record: UploadRecord, accept_local_files: bool) -> BeginResult:
        expiry = self._grant_expiry(record)
        grants = await asyncio.gather(
            *(self._upload_grant(s, accept_local_files, expiry) for s in record.blobs)
        )
        missing = {s.sha256 for s in record.blobs}
        present = tuple(sorted({a.sha256 for a in record.artifacts} - missing))
        return BeginResult(
            upload_id=record.upload_id,
            expire_time=record.expire_time,
            grants=tuple(grants),
            present=present,
        )

    async def _open_upload(self, upload_id: str) -> tuple[UploadRecord, str]:
        if not upload_id or len(upload_id) > 64 or not upload_id.replace("-", "").isalnum():
            raise InvalidArgument(f"upload_id {upload_id[:70]!r} is malformed", field="upload_id")
        found = await self._get(keys.upload(upload_id), UploadRecord)
        if found is None:
            raise NotFound(
                f"upload {upload_id} not found: it was aborted, expired or never begun",
                field="upload_id",
            )
        if found[0].state == "open" and found[0].expire_time <= now():
            raise NotFound(
                f"upload {upload_id} expired; begin the version again", field="upload_id"
            )
        return found

    async def renew_upload_grants(
        self, upload_id: str, digests: Sequence[str], accept_local_files: bool
    ) -> tuple[list[UploadGrantSpec], datetime]:
        """Fresh grants for an open upload's missing blobs (or the ones named)."""
        record, _ = await self._open_upload(upload_id)
        if record.state != "open":
            raise FailedPrecondition(f"upload {upload_id} is already committed", field="upload_id")
        states = {s.sha256: s for s in record.blobs}
        for index, digest in enumerate(digests):
            if digest not in states:
                raise NotFound(
                    f"blob {digest} is not missing from upload {upload_id}",
                    field=f"sha256[{index}]",
                )
        chosen = [states[d] for d in digests] if digests else list(states.values())
        expiry = self._grant_expiry(record)
        grants = [await self._upload_grant(s, accept_local_files, expiry) for s in chosen]
        return grants, record.expire_time

    async def abort_version(self, upload_id: str) -> None:
        """Abandon an open upload; unknown or expired ones succeed."""
        try:
            record, _ = await self._open_upload(upload_id)
        except NotFound:
            return
        if record.state == "committed":
            raise FailedPrecondition(
                f"upload {upload_id} was committed as version {record.model}:{record.version}; "
                "delete the version instead",
                field="upload_id",
            )
        await self._discard_upload(record)

    async def _discard_upload(self, record: UploadRecord) -> None:
        for state in record.blobs:
            await self.store.discard_blob_upload(state)
        for digest in {a.sha256 for a in record.artifacts}:
            await self.store.delete(keys.ref(digest, record.upload_id))
        await self.store.delete(keys.upload(record.upload_id))
        log.info("upload discarded", extra={"upload_id": record.upload_id})

    # --- downloads

    async def download_grants(
        self, view: VersionView, paths: Sequence[str], accept_local_files: bool
    ) -> list[tuple[ArtifactRecord, DownloadGrantSpec]]:
        """Grants to read the named artifacts of a version (all when `paths` is empty)."""
        by_path = {a.path: a for a in view.manifest.artifacts}
        for index, path in enumerate(paths):
            names.check_artifact_path(path, f"paths[{index}]")
            if path not in by_path:
                raise NotFound(
                    f"version {view.manifest.model}:{view.manifest.number} has no artifact "
                    f"{path!r}",
                    field=f"paths[{index}]",
                )
        chosen = [by_path[p] for p in paths] if paths else list(view.manifest.artifacts)
        expiry = now() + timedelta(seconds=self.settings.grant_ttl_seconds)
        local = self._local_files(accept_local_files)
        grants = []
        for a in chosen:
            grant = await self.store.download_grant(
                a.sha256, accept_local_files=local, expire_time=expiry
            )
            grants.append((a, self._checked(grant, local)))
        return grants
