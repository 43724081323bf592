"""What every part of the `Registry` shares: the store and settings, the per-key locks, reading a
record and writing one by compare-and-swap, a model's live record, its version numbers and
aliases, a version's manifest, and the views the API shows.

`RegistryCore` is the base of every part (`catalogue`, `uploads`, `commits`, `collection`);
`forgeline_registry.service` says how `Registry` is composed of them and what they guarantee.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from forgeline_kit.errors import Aborted, Internal, NotFound
from forgeline_registry.manifests import AliasRecord, ModelRecord, VersionManifest, dump, keys
from forgeline_registry.settings import RegistrySettings
from forgeline_registry.storage.base import ObjectNotFound, ObjectStore, PreconditionFailed

__all__ = [
    "LATEST",
    "MAX_CAS_ATTEMPTS",
    "ModelView",
    "RegistryCore",
    "VersionView",
    "log",
    "version_number",
]

#: One logger for every part: the registry's log lines kept the name they had before the split.
log = logging.getLogger("forgeline_registry.service")

R = TypeVar("R", bound=BaseModel)

LATEST = "latest"
#: Bounded retries of compare-and-swap loops; contention past this is reported as ABORTED.
MAX_CAS_ATTEMPTS = 100


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


def version_number(key: str) -> int:
    """The number of the version whose manifest or deleted-version marker is at `key`."""
    return int(key.rsplit("/", 1)[-1].split(".", 1)[0])


class RegistryCore:
    """The store and the records every part of the `Registry` reads and writes."""

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
        return [n for n in (version_number(k) for k in listed) if n not in gone]

    async def _aliases(self, model: str) -> dict[str, AliasRecord]:
        names_ = [n[: -len(".json")] for n in await self.store.list_children(keys.aliases(model))]
        found = await asyncio.gather(
            *(self._get(keys.alias(model, a), AliasRecord) for a in names_)
        )
        return {a: f[0] for a, f in zip(names_, found, strict=True) if f is not None}

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
