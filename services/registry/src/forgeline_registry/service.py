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

The logic is split by responsibility into parts of one `Registry` object, each in its module:
`registry_core` (the store and the records every part shares), `catalogue` (models, versions,
lineage, aliases), `uploads` (BeginVersion to abort, download grants), `commits` (verifying and
committing an upload, sweeping expired ones) and `collection` (deleting versions and models,
collecting blobs, finishing what a dead registry left half-done). This module holds the
guarantees they keep together, and the janitor that runs the housekeeping of them all.
"""

from __future__ import annotations

import asyncio
import contextlib

from forgeline_registry.catalogue import Catalogue
from forgeline_registry.collection import Collection
from forgeline_registry.commits import Commits
from forgeline_registry.registry_core import LATEST, ModelView, VersionView, log
from forgeline_registry.uploads import BeginResult, NewVersion, Uploads

__all__ = [
    "LATEST",
    "BeginResult",
    "ModelView",
    "NewVersion",
    "Registry",
    "VersionView",
]


class Registry(Commits, Uploads, Catalogue, Collection):
    """Models, versions, aliases and lineage on an `ObjectStore`.

    One object made of parts by inheritance, each part a class in its own module on
    `RegistryCore` (the store, settings, locks and shared records): `Catalogue`; `Uploads`, on
    the catalogue; `Collection`; `Commits`, on uploads and collection. A part's bases are the
    parts it calls. Inheritance rather than separate objects, because the steps of one
    operation cross parts (a commit withdrawn by a model's deletion is deleted like any
    version): through ``self`` they act as one registry, with one set of locks, and a step
    replaced on the instance (as tests do to stage a crash) is replaced for every part.
    `Registry` adds the janitor, which runs the housekeeping of commits and collection.
    """

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
