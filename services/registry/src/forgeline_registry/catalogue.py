"""The catalogue part of the `Registry`: models (create, get, list, update), versions (get,
resolve a reference, list, update), lineage, and aliases.

Reading and editing what exists; versions are added by `uploads`/`commits` and removed by
`collection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from forgeline_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from forgeline_kit.operations.page_tokens import decode_page_token, encode_page_token
from forgeline_registry.manifests import (
    AliasRecord,
    ChildRecord,
    ModelRecord,
    VersionManifest,
    dump,
    keys,
    now,
)
from forgeline_registry.registry_core import (
    LATEST,
    ModelView,
    RegistryCore,
    VersionView,
    log,
    version_number,
)
from forgeline_registry.storage.base import PreconditionFailed
from forgeline_registry_client import names

__all__ = ["Catalogue"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_LINEAGE_DEPTH = 64


def _page_size(size: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class Catalogue(RegistryCore):
    """Models, versions, lineage and aliases as they are read and edited."""

    # --- models

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
        after = decode_page_token(page_token)
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
        return views, encode_page_token(last) if more else ""

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

    # --- versions

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
        after = decode_page_token(page_token)
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
        return views, encode_page_token(last) if more and last is not None else ""

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
                    ((keys.model_from_dir(child_dir), version_number(file)), record[0].relation)
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
