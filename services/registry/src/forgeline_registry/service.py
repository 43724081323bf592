"""The registry's domain logic, independent of gRPC: models, versions, aliases, lineage, uploads.

Every guarantee rests on the store's two conditional writes, so it holds for any number of
registry replicas sharing one store:

- A version becomes visible when its manifest is created (``if_none_match``), after every blob
  it refers to was hashed and published. The manifest's key is its number, so a number is handed
  out at most once; a deleted version leaves a tombstone under its key, so numbers are never
  reused either. A commit records the number it is claiming in its upload first: a commit
  interrupted after writing the manifest is finished by its retry, never committed twice.
- Aliases move by compare-and-swap on their record's ETag.
- A blob is collected only when no upload refers to it. A commit writes its reference, then
  checks that no collection of the blob is under way; a collection writes its marker, then
  checks for references. Whichever comes second sees the other, so a blob is never removed under
  a version that is being committed.
- A model's deletion first writes a tombstone into the model's record (compare-and-swap); then
  it deletes the versions, then the rest, then the record. A commit creates its manifest, then
  reads the model's record: a commit that sees the tombstone (or another model of that name, or
  none) withdraws its manifest and is refused; a deletion that lists the versions after the
  tombstone sees every manifest created before it. Whichever comes second sees the other, so no
  version lands in a model being deleted, and the model reads as not found from the tombstone on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import mimetypes
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from forgeline_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from forgeline_registry import names
from forgeline_registry.manifests import (
    AliasRecord,
    ArtifactRecord,
    BlobUploadState,
    ChildRecord,
    CollectionMarker,
    LineageRecord,
    ModelDeletion,
    ModelRecord,
    RequestRecord,
    UploadRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.settings import RegistrySettings
from forgeline_registry.storage.base import (
    BlobIncomplete,
    DownloadGrantSpec,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    UploadedPart,
    UploadGrantSpec,
)

__all__ = [
    "LATEST",
    "BeginResult",
    "ModelView",
    "NewVersion",
    "Registry",
    "VersionView",
]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
G = TypeVar("G", UploadGrantSpec, DownloadGrantSpec)

LATEST = "latest"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_LINEAGE_DEPTH = 64
#: Bounded retries of compare-and-swap loops; contention past this is reported as ABORTED.
MAX_CAS_ATTEMPTS = 100
#: How long a commit waits for a collection of one of its blobs to finish.
GC_WAIT_SECONDS = 10.0
#: A collection marker this old belongs to a registry that died (a collection takes seconds); the
#: janitor then finishes that collection, and the version deletion that started it.
GC_STALE_SECONDS = 300.0

_MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".gguf": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".png": "image/png",
    ".model": "application/octet-stream",
}


def guess_media_type(path: str) -> str:
    """The media type of an artifact from its path, ``application/octet-stream`` if unknown."""
    name = path.rsplit("/", 1)[-1]
    if name == "Modelfile":
        return "text/plain"
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass(frozen=True)
class ModelView:
    """A model as the API shows it."""

    record: ModelRecord
    aliases: dict[str, int]
    latest_version: int
    version_count: int
    update_time: datetime


@dataclass(frozen=True)
class VersionView:
    """A committed version as the API shows it."""

    manifest: VersionManifest
    aliases: tuple[str, ...] = ()


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


def _page_token(value: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode().rstrip("=")


def _page_after(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    if not text.startswith("v1:"):
        raise InvalidArgument(
            "page_token is not a token this registry issued; pass next_page_token as received",
            field="page_token",
        )
    return text[3:]


def _page_size(size: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _version_number(key: str) -> int:
    return int(key.rsplit("/", 1)[-1].split(".", 1)[0])


class Registry:
    """Models, versions, aliases and lineage on an `ObjectStore`."""

    def __init__(self, store: ObjectStore, settings: RegistrySettings | None = None) -> None:
        self.store = store
        self.settings = settings or RegistrySettings()
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}

    def _lock(self, table: dict[str, asyncio.Lock], key: str) -> asyncio.Lock:
        return table.setdefault(key, asyncio.Lock())

    # --- records

    async def _get(self, key: str, cls: type[R]) -> tuple[R, str] | None:
        try:
            data, etag = await self.store.read(key)
        except ObjectNotFound:
            return None
        try:
            return cls.model_validate_json(data), etag
        except ValidationError as exc:
            log.error("unreadable record %s: %s", key, exc, extra={"key": key})
            raise Internal(f"the registry's record {key} is unreadable") from exc

    async def _cas(
        self, key: str, cls: type[R], change: Callable[[R | None], R | None]
    ) -> R | None:
        """Apply `change` to the record at `key` by compare-and-swap; None from `change`
        leaves the record as it is. Returns the record written (or None)."""
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self._get(key, cls)
            new = change(current[0] if current else None)
            if new is None:
                return None
            try:
                if current is None:
                    await self.store.write(key, dump(new), if_none_match=True)
                else:
                    await self.store.write(key, dump(new), if_match=current[1])
            except PreconditionFailed:
                continue
            return new
        raise Aborted(f"{key} is changing too often to update; retry")

    # --- models

    @staticmethod
    def _live(name: str, found: tuple[ModelRecord, str] | None) -> ModelRecord:
        """The model's record, unless it is missing or being deleted (NotFound either way: from
        its tombstone on, a model being deleted is gone for readers)."""
        if found is None:
            raise NotFound(f"model {name!r} not found", field="model")
        if found[0].deletion is not None:
            raise NotFound(f"model {name!r} not found: it is being deleted", field="model")
        return found[0]

    async def _model(self, name: str) -> ModelRecord:
        return self._live(name, await self._get(keys.model(name), ModelRecord))

    async def _numbers(self, model: str) -> list[int]:
        """Numbers of the model's versions that are not deleted, ascending."""
        listed, deleted = await asyncio.gather(
            self.store.list_children(keys.versions(model)),
            self.store.list_children(keys.deleted(model)),
        )
        gone = {int(name) for name in deleted}
        return [n for n in (_version_number(k) for k in listed) if n not in gone]

    async def _next_number(self, model: str) -> int:
        """One past every number the model's name ever used: its version keys (tombstones
        included) and its deleted-version markers, so that a number is never handed out twice,
        not even to a model created again under a deleted one's name."""
        listed, deleted = await asyncio.gather(
            self.store.list_children(keys.versions(model)),
            self.store.list_children(keys.deleted(model)),
        )
        used = [_version_number(k) for k in listed] + [int(n) for n in deleted if n.isdigit()]
        return max(used, default=0) + 1

    async def _aliases(self, model: str) -> dict[str, AliasRecord]:
        names_ = [n[: -len(".json")] for n in await self.store.list_children(keys.aliases(model))]
        found = await asyncio.gather(
            *(self._get(keys.alias(model, a), AliasRecord) for a in names_)
        )
        return {a: f[0] for a, f in zip(names_, found, strict=True) if f is not None}

    async def _model_view(self, record: ModelRecord) -> ModelView:
        numbers, aliases = await asyncio.gather(
            self._numbers(record.name), self._aliases(record.name)
        )
        times = [record.update_time, *(a.update_time for a in aliases.values())]
        if numbers:
            latest = await self._get(keys.version(record.name, numbers[-1]), VersionManifest)
            if latest is not None:
                times.append(latest[0].create_time)
        return ModelView(
            record=record,
            aliases={name: a.version for name, a in sorted(aliases.items())},
            latest_version=numbers[-1] if numbers else 0,
            version_count=len(numbers),
            update_time=max(times),
        )

    async def create_model(
        self, name: str, description: str = "", labels: dict[str, str] | None = None
    ) -> ModelView:
        """Create a model. Raises AlreadyExists."""
        names.check_model_name(name, "model.name")
        names.check_labels(labels or {}, "model.labels")
        stamp = now()
        record = ModelRecord(
            name=name,
            description=description,
            labels=labels or {},
            create_time=stamp,
            update_time=stamp,
        )
        try:
            await self.store.write(keys.model(name), dump(record), if_none_match=True)
        except PreconditionFailed:
            found = await self._get(keys.model(name), ModelRecord)
            if found is not None and found[0].deletion is not None:
                raise FailedPrecondition(
                    f"model {name!r} is being deleted: create it again once the deletion has "
                    "finished (repeat DeleteModel to finish one that was interrupted)",
                    field="model.name",
                ) from None
            raise AlreadyExists(f"model {name!r} already exists", field="model.name") from None
        log.info("model created", extra={"model": name})
        return await self._model_view(record)

    async def get_model(self, name: str) -> ModelView:
        """A model. Raises NotFound."""
        names.check_model_name(name, "name")
        return await self._model_view(await self._model(name))

    async def list_models(
        self,
        page_size: int = 0,
        page_token: str = "",
        name_prefix: str = "",
        labels: dict[str, str] | None = None,
    ) -> tuple[list[ModelView], str]:
        """Models in name order, filtered; and the next page's token."""
        size = _page_size(page_size)
        after = _page_after(page_token)
        every = sorted(keys.model_from_dir(d) for d in await self.store.list_children("models/"))
        wanted = [n for n in every if n.startswith(name_prefix) and n > after]
        views: list[ModelView] = []
        last = ""
        for name in wanted:
            found = await self._get(keys.model(name), ModelRecord)
            last = name
            if found is None or found[0].deletion is not None:
                continue
            if any(found[0].labels.get(k) != v for k, v in (labels or {}).items()):
                continue
            views.append(await self._model_view(found[0]))
            if len(views) == size:
                break
        more = bool(wanted) and last != wanted[-1]
        return views, _page_token(last) if more else ""

    async def update_model(
        self, name: str, description: str | None, labels: dict[str, str] | None
    ) -> ModelView:
        """Change a model's description and/or labels."""
        names.check_model_name(name, "model.name")
        names.check_labels(labels or {}, "model.labels")
        await self._model(name)

        def change(current: ModelRecord | None) -> ModelRecord:
            if current is None or current.deletion is not None:
                raise NotFound(f"model {name!r} not found", field="model.name")
            update: dict[str, Any] = {"update_time": now()}
            if description is not None:
                update["description"] = description
            if labels is not None:
                update["labels"] = labels
            return current.model_copy(update=update)

        record = await self._cas(keys.model(name), ModelRecord, change)
        assert record is not None
        return await self._model_view(record)

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
            number = _version_number(highest)
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

    # --- versions: reading

    async def _manifest(self, model: str, number: int) -> tuple[VersionManifest, str]:
        # The model too: a version of a model being deleted is not shown, even for the moment a
        # commit racing the deletion takes to withdraw it.
        found, owner = await asyncio.gather(
            self._get(keys.version(model, number), VersionManifest),
            self._get(keys.model(model), ModelRecord),
        )
        self._live(model, owner)
        if found is None or found[0].deleted:
            raise NotFound(f"version {model}:{number} not found", field="version")
        return found

    async def _view(self, manifest: VersionManifest) -> VersionView:
        aliases = await self._aliases(manifest.model)
        return VersionView(
            manifest=manifest,
            aliases=tuple(sorted(a for a, r in aliases.items() if r.version == manifest.number)),
        )

    async def get_version(self, model: str, number: int) -> VersionView:
        """A version. Raises NotFound naming the model or the version."""
        names.check_model_name(model)
        if number < 1:
            raise InvalidArgument("version must be a positive number", field="version")
        return await self._view((await self._manifest(model, number))[0])

    async def resolve(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> VersionView:
        """The version a reference names; no version and no alias mean ``@latest``."""
        names.check_model_name(model, "reference.model")
        if version is not None:
            return await self.get_version(model, version)
        alias = names.check_alias(alias or LATEST, "reference.alias")
        found, owner = await asyncio.gather(
            self._get(keys.alias(model, alias), AliasRecord),
            self._get(keys.model(model), ModelRecord),
        )
        self._live(model, owner)
        if found is None:
            if alias == LATEST:
                raise NotFound(f"model {model!r} has no versions", field="reference")
            raise NotFound(f"alias {model}@{alias} not found", field="reference.alias")
        manifest = await self._get(keys.version(model, found[0].version), VersionManifest)
        if manifest is None or manifest[0].deleted:
            raise NotFound(
                f"alias {model}@{alias} points at version {found[0].version}, which was deleted",
                field="reference.alias",
            )
        return await self._view(manifest[0])

    async def list_versions(
        self,
        model: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        kinds: Sequence[str] = (),
        labels: dict[str, str] | None = None,
        parent: tuple[str, int] | None = None,
        relation: str = "",
        descending: bool = False,
    ) -> tuple[list[VersionView], str]:
        """A page of the model's versions, filtered, and the next page's token."""
        names.check_model_name(model)
        size = _page_size(page_size)
        after = _page_after(page_token)
        if after and not after.isdigit():
            raise InvalidArgument("page_token is malformed", field="page_token")
        await self._model(model)
        numbers = await self._numbers(model)
        if parent is not None:
            children = await self._children(*parent)
            numbers = [
                n
                for n in numbers
                if any(c == (model, n) and (not relation or r == relation) for c, r in children)
            ]
        if descending:
            numbers.reverse()
        if after:
            mark = int(after)
            numbers = [n for n in numbers if (n < mark if descending else n > mark)]
        aliases = await self._aliases(model)
        views: list[VersionView] = []
        last = None
        for number in numbers:
            last = number
            found = await self._get(keys.version(model, number), VersionManifest)
            if found is None or found[0].deleted:
                continue
            manifest = found[0]
            if kinds and manifest.kind not in kinds:
                continue
            if any(manifest.labels.get(k) != v for k, v in (labels or {}).items()):
                continue
            views.append(
                VersionView(
                    manifest,
                    tuple(sorted(a for a, r in aliases.items() if r.version == number)),
                )
            )
            if len(views) == size:
                break
        more = last is not None and last != numbers[-1]
        return views, _page_token(str(last)) if more else ""

    async def update_version(
        self, model: str, number: int, description: str | None, labels: dict[str, str] | None
    ) -> VersionView:
        """Change a version's description and/or labels."""
        names.check_model_name(model, "version.model")
        names.check_labels(labels or {}, "version.labels")
        await self._manifest(model, number)

        def change(current: VersionManifest | None) -> VersionManifest:
            if current is None or current.deleted:
                raise NotFound(f"version {model}:{number} not found", field="version")
            update: dict[str, Any] = {}
            if description is not None:
                update["description"] = description
            if labels is not None:
                update["labels"] = labels
            return current.model_copy(update=update)

        manifest = await self._cas(keys.version(model, number), VersionManifest, change)
        assert manifest is not None
        return await self._view(manifest)

    # --- lineage

    async def _children(self, model: str, number: int) -> list[tuple[tuple[str, int], str]]:
        prefix = keys.children(model, number)
        entries = await self.store.list_keys(prefix)
        found = []
        for key in entries:
            child_dir, _, file = key[len(prefix) :].rpartition("/")
            record = await self._get(key, ChildRecord)
            if record is not None:
                found.append(
                    ((keys.model_from_dir(child_dir), _version_number(file)), record[0].relation)
                )
        return found

    async def get_lineage(
        self,
        model: str,
        number: int,
        *,
        ancestors: bool = True,
        descendants: bool = True,
        max_depth: int = 1,
    ) -> tuple[list[tuple[tuple[str, int], tuple[str, int], str]], list[VersionView]]:
        """Edges (parent, child, relation) and versions reached from a version."""
        if not 0 <= max_depth <= MAX_LINEAGE_DEPTH:
            raise InvalidArgument(f"max_depth must be 0-{MAX_LINEAGE_DEPTH}", field="max_depth")
        depth = max_depth or 1
        start = (await self.get_version(model, number)).manifest
        edges: dict[tuple[tuple[str, int], tuple[str, int]], str] = {}
        reached: dict[tuple[str, int], VersionManifest] = {(model, number): start}

        async def manifest_of(ref: tuple[str, int]) -> VersionManifest | None:
            if ref not in reached:
                found = await self._get(keys.version(*ref), VersionManifest)
                if found is None or found[0].deleted:
                    return None
                reached[ref] = found[0]
            return reached[ref]

        if ancestors:
            frontier = [(model, number)]
            for _ in range(depth):
                following = []
                for ref in frontier:
                    manifest = await manifest_of(ref)
                    for parent in manifest.lineage.parents if manifest else ():
                        key = (parent.model, parent.version)
                        if (key, ref) not in edges:
                            edges[(key, ref)] = parent.relation
                            following.append(key)
                frontier = following
        if descendants:
            frontier = [(model, number)]
            for _ in range(depth):
                following = []
                for ref in frontier:
                    for child, relation in await self._children(*ref):
                        if (ref, child) not in edges and await manifest_of(child) is not None:
                            edges[(ref, child)] = relation
                            following.append(child)
                frontier = following
        for parent_ref, _ in list(edges):
            await manifest_of(parent_ref)
        views = [await self._view(m) for m in reached.values()]
        return [(p, c, r) for (p, c), r in edges.items()], views

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
        # comes after the manifest is created (see the module docstring).
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
        deletion that listed the versions before missed nothing (see the module docstring)."""
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
        # The reference first, then the check for a collection: see the module docstring.
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

    async def _wait_for_collection(self, digest: str) -> None:
        deadline = asyncio.get_running_loop().time() + GC_WAIT_SECONDS
        delay = 0.02
        while await self.store.list_keys(keys.gc(digest)):
            if asyncio.get_running_loop().time() > deadline:
                raise Aborted(f"blob {digest} is being garbage-collected by another request; retry")
            await asyncio.sleep(delay)  # backoff between polls of a real marker
            delay = min(delay * 2, 0.5)

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

    # --- deleting

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

    # --- aliases

    async def set_alias(
        self, model: str, alias: str, version: int, expected: int | None = None
    ) -> tuple[str, AliasRecord]:
        """Point `alias` at `version`; with `expected`, only if it points there now (0: absent)."""
        names.check_model_name(model)
        names.check_alias(alias)
        if version < 1:
            raise InvalidArgument("version must be a positive number", field="version")
        await self._manifest(model, version)

        def change(current: AliasRecord | None) -> AliasRecord:
            self._expect(model, alias, current, expected)
            return AliasRecord(version=version, update_time=now())

        record = await self._cas(keys.alias(model, alias), AliasRecord, change)
        assert record is not None
        log.info("alias set", extra={"model": model, "alias": alias, "version": version})
        return alias, record

    @staticmethod
    def _expect(model: str, alias: str, current: AliasRecord | None, expected: int | None) -> None:
        if expected is None:
            return
        actual = current.version if current else 0
        if actual != expected:
            where = f"points at version {actual}" if actual else "does not exist"
            raise Aborted(
                f"alias {model}@{alias} {where}, not {expected or 'nowhere'} as expected; read "
                "it again and retry",
                field="expected_version",
            )

    async def delete_alias(self, model: str, alias: str, expected: int | None = None) -> None:
        """Remove an alias (never ``latest``)."""
        names.check_model_name(model)
        names.check_alias(alias)
        if alias == LATEST:
            raise InvalidArgument(
                "the alias 'latest' cannot be deleted: every commit moves it", field="alias"
            )
        found = await self._get(keys.alias(model, alias), AliasRecord)
        if found is None:
            await self._model(model)
            raise NotFound(f"alias {model}@{alias} not found", field="alias")
        self._expect(model, alias, found[0], expected)
        await self.store.delete(keys.alias(model, alias))

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

    async def run_janitor(self, stop: asyncio.Event) -> None:
        """Sweep every `janitor_interval_seconds` until `stop` is set: expired uploads, and what
        a registry that died left half-done."""
        while not stop.is_set():
            try:
                await self.sweep()
                await self.finish_interrupted_collections()
                await self.finish_interrupted_model_deletions()
            except Exception:
                log.warning("housekeeping failed; trying again later", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.janitor_interval_seconds)


class _DigestMismatch(Exception):  # noqa: N818
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field
