"""The registry as the converter uses it: the few calls a conversion makes (resolve, look up,
list, pull, push, delete), taking and returning the converter's own types.

This is the converter's outbound edge, as `grpc_api` is its inbound one: the registry client
speaks ``forgeline.registry.v1``, and only this module builds or reads those messages. Errors
pass through unchanged (the client raises the kit's `ForgelineError`s), so the stages decide
what a registry failure means for a conversion (`run_context.registry_failure`).

The registry's enumerations are kept by their contract names (``VERSION_KIND_GGUF``), as the
registry's own records keep them; `VersionKind` and `Relation` name the ones the converter tells
apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from forgeline_converter.conversions import VersionRef
from forgeline_converter.convert import version_ref_from_pb, version_ref_to_pb
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "NewVersion",
    "RegistryAccess",
    "RegistryArtifact",
    "RegistryParent",
    "RegistryVersion",
    "Relation",
    "VersionKind",
]

_V = TypeVar("_V", bound=int)


class VersionKind(StrEnum):
    """The registry's version kinds the converter tells apart, by their contract names."""

    BASE = "VERSION_KIND_BASE"
    MERGED = "VERSION_KIND_MERGED"
    FINETUNED = "VERSION_KIND_FINETUNED"
    ADAPTER = "VERSION_KIND_ADAPTER"
    GGUF = "VERSION_KIND_GGUF"
    GGUF_ADAPTER = "VERSION_KIND_GGUF_ADAPTER"


class Relation(StrEnum):
    """The lineage relations the converter reads or records, by their contract names."""

    CONVERTED_FROM = "RELATION_CONVERTED_FROM"
    ADAPTER_OF = "RELATION_ADAPTER_OF"
    CALIBRATED_WITH = "RELATION_CALIBRATED_WITH"


@dataclass(frozen=True)
class RegistryArtifact:
    """One file of a registry version."""

    path: str
    gguf_file_type: str = ""


@dataclass(frozen=True)
class RegistryParent:
    """A lineage parent: the version, and its relation by contract name."""

    version: VersionRef
    relation: str


@dataclass(frozen=True)
class RegistryVersion:
    """What the converter reads of a registry version. ``kind`` is the contract's name of any
    kind (compare with `VersionKind`); ``artifacts`` and ``parents`` are empty in the views
    that leave them out."""

    model: str
    number: int
    kind: str
    labels: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[RegistryArtifact, ...] = ()
    parents: tuple[RegistryParent, ...] = ()
    size_bytes: int = 0

    def pinned(self) -> VersionRef:
        """A reference to exactly this version."""
        return VersionRef(model=self.model, version=self.number)


@dataclass(frozen=True)
class NewVersion:
    """A version to push: where, its kind, its lineage and what it is labelled. Every ``.gguf``
    file of it carries ``gguf_file_type``."""

    model: str
    kind: VersionKind
    parents: tuple[RegistryParent, ...]
    request_id: str
    gguf_file_type: str
    chat_template: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    produced_by: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


def _name(wrapper: _EnumTypeWrapper[_V], value: _V) -> str:
    # A kind a newer registry added is kept by its number rather than failing the call.
    try:
        return wrapper.Name(value)
    except ValueError:
        return str(value)


def _version(version: rpb.Version) -> RegistryVersion:
    return RegistryVersion(
        model=version.model,
        number=version.number,
        kind=_name(rpb.VersionKind, version.kind),
        labels=dict(version.labels),
        artifacts=tuple(
            RegistryArtifact(path=a.path, gguf_file_type=a.gguf_file_type)
            for a in version.artifacts
        ),
        parents=tuple(
            RegistryParent(
                version=version_ref_from_pb(p.version), relation=_name(rpb.Relation, p.relation)
            )
            for p in version.lineage.parents
        ),
        size_bytes=version.size_bytes,
    )


class RegistryAccess:
    """The registry calls of the converter, over a `RegistryClient`."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()

    async def resolve(self, ref: VersionRef) -> RegistryVersion:
        """The version ``ref`` names, with its artifacts and lineage (FULL view).

        Raises:
            NotFound: the registry has no such version (or alias).
        """
        return _version(
            await self.client.resolve_version(
                rpb.ResolveVersionRequest(ref=version_ref_to_pb(ref), view=rpb.VERSION_VIEW_FULL)
            )
        )

    async def get_version(self, ref: VersionRef) -> RegistryVersion:
        """The numbered version ``ref`` pins, without its artifacts (BASIC view)."""
        return _version(
            await self.client.get_version(
                rpb.GetVersionRequest(
                    model=ref.model, version=ref.version or 0, view=rpb.VERSION_VIEW_BASIC
                )
            )
        )

    async def list_versions(
        self, model: str, *, kind: VersionKind, parent: VersionRef, relation: Relation, limit: int
    ) -> list[RegistryVersion]:
        """Up to ``limit`` versions of ``model`` of ``kind`` that have ``parent`` by ``relation``.

        Raises:
            NotFound: there is no such model.
        """
        answer = await self.client.list_versions(
            rpb.ListVersionsRequest(
                model=model,
                kinds=[rpb.VersionKind.Value(kind.value)],
                parent=version_ref_to_pb(parent),
                relation=rpb.Relation.Value(relation.value),
                page_size=limit,
            )
        )
        return [_version(v) for v in answer.versions]

    async def pull(
        self, reference: str, target: Path, paths: Sequence[str] = ()
    ) -> RegistryVersion:
        """Write the artifacts of ``reference`` (``MODEL:VERSION``; only ``paths`` when given)
        under ``target``; the version pulled."""
        return _version(await self.client.pull(reference, target, paths=paths))

    async def push(self, directory: Path, new: NewVersion) -> VersionRef:
        """Push ``directory`` as a version; a reference to the version registered (the one
        registered before, when ``new.request_id`` was seen)."""
        client = self.client
        plan, _ = await client.plan(directory)
        # The registry guesses file types from file names, and ``model.gguf`` names none.
        for artifact in plan.artifacts:
            if artifact.path.endswith(".gguf"):
                artifact.gguf_file_type = new.gguf_file_type
        begin = await client.begin_version(
            rpb.BeginVersionRequest(
                model=new.model,
                create_model=True,
                kind=rpb.VersionKind.Value(new.kind.value),
                artifacts=plan.artifacts,
                lineage=rpb.Lineage(
                    parents=[
                        rpb.Parent(
                            version=version_ref_to_pb(p.version),
                            relation=rpb.Relation.Value(p.relation),
                        )
                        for p in new.parents
                    ],
                    chat_template=new.chat_template,
                    metrics=new.metrics,
                    tool_versions=new.tool_versions,
                    produced_by=new.produced_by,
                ),
                labels=new.labels,
                description=new.description,
                request_id=new.request_id,
                transfer=client.transfer_options,
            )
        )
        if begin.HasField("committed_version"):
            version = begin.committed_version
        else:
            multipart = await client.upload(begin, plan)
            version = await client.commit_version(
                rpb.CommitVersionRequest(upload_id=begin.upload_id, multipart_uploads=multipart)
            )
        return VersionRef(model=version.model, version=version.number)

    async def delete_version(self, ref: VersionRef) -> None:
        """Delete the numbered version ``ref`` pins, even when it has children."""
        await self.client.delete_version(
            rpb.DeleteVersionRequest(model=ref.model, version=ref.version or 0, force=True)
        )
