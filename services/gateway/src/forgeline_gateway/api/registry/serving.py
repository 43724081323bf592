"""Reading the registry for `/v1/registry/...`: gRPC messages become the protocol's models."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from forgeline_gateway.api.registry.protocol import (
    LineageEdge,
    LineageGraph,
    Parent,
    RegistryArtifact,
    RegistryModel,
    RegistryModelList,
    RegistryVersion,
    RegistryVersionList,
)
from forgeline_kit.errors import FailedPrecondition, InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

__all__ = ["RegistryServing"]

_PAGE = 1000
#: Pages read at most per listing (a million entries).
_MAX_PAGES = 1000


def _enum_name(value: str, prefix: str) -> str:
    return value.removeprefix(prefix).lower()


def _seconds(stamp: Timestamp) -> int | None:
    return stamp.seconds or None


def _ref(ref: common_pb2.VersionRef) -> str:
    return f"{ref.model}:{ref.version}"


def _version(version: pb.Version, *, with_artifacts: bool = False) -> RegistryVersion:
    lineage = version.lineage
    return RegistryVersion(
        reference=f"{version.model}:{version.number}",
        model=version.model,
        number=version.number,
        kind=_enum_name(pb.VersionKind.Name(version.kind), "VERSION_KIND_"),
        state=_enum_name(pb.VersionState.Name(version.state), "VERSION_STATE_"),
        size_bytes=version.size_bytes,
        artifact_count=version.artifact_count,
        aliases=list(version.aliases),
        labels=dict(version.labels),
        description=version.description,
        created_at=_seconds(version.create_time),
        template=lineage.template,
        metrics=dict(lineage.metrics),
        parents=[
            Parent(
                reference=_ref(parent.version),
                relation=_enum_name(pb.Relation.Name(parent.relation), "RELATION_"),
            )
            for parent in lineage.parents
        ],
        artifacts=[
            RegistryArtifact(
                path=a.path,
                kind=_enum_name(pb.ArtifactKind.Name(a.kind), "ARTIFACT_KIND_"),
                sha256=a.sha256,
                size_bytes=a.size_bytes,
                gguf_file_type=a.gguf_file_type,
            )
            for a in version.artifacts
        ]
        if with_artifacts
        else None,
    )


class RegistryServing:
    """The registry's models, versions and lineage, read with the gateway's registry client
    (None: no registry configured, every call a 400 saying which setting to set)."""

    def __init__(self, registry: RegistryClient | None) -> None:
        self.registry = registry

    def _client(self) -> RegistryClient:
        if self.registry is None:
            raise FailedPrecondition(
                "this gateway has no model registry configured: set "
                "FORGELINE_GATEWAY_REGISTRY_TARGET"
            )
        return self.registry

    async def models(self, prefix: str | None) -> RegistryModelList:
        client = self._client()
        models: list[pb.Model] = []
        token = ""
        for _ in range(_MAX_PAGES):
            page = await client.list_models(
                pb.ListModelsRequest(page_size=_PAGE, page_token=token, name_prefix=prefix or "")
            )
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                break
        return RegistryModelList(
            data=[
                RegistryModel(
                    name=m.name,
                    description=m.description,
                    labels=dict(m.labels),
                    aliases=dict(m.aliases),
                    latest_version=m.latest_version,
                    version_count=m.version_count,
                    created_at=_seconds(m.create_time),
                    updated_at=_seconds(m.update_time),
                )
                for m in models
            ]
        )

    async def versions(self, model: str) -> RegistryVersionList:
        client = self._client()
        versions: list[pb.Version] = []
        token = ""
        for _ in range(_MAX_PAGES):
            page = await client.list_versions(
                pb.ListVersionsRequest(
                    model=model, page_size=_PAGE, page_token=token, order_by="number desc"
                )
            )
            versions.extend(page.versions)
            token = page.next_page_token
            if not token:
                break
        return RegistryVersionList(data=[_version(v) for v in versions])

    async def version(self, reference: str) -> RegistryVersion:
        """One version (``MODEL:N``, or ``MODEL@ALIAS``, or ``MODEL`` for its latest), with its
        files."""
        found = await self._client().resolve_version(
            pb.ResolveVersionRequest(reference=reference, view=pb.VERSION_VIEW_FULL)
        )
        return _version(found, with_artifacts=True)

    async def lineage(self, reference: str, depth: int) -> LineageGraph:
        client = self._client()
        model, _, number = reference.rpartition(":")
        if not model or not number.isdigit():
            raise InvalidArgument(
                f"'{reference}' is not a version reference: give MODEL:NUMBER", field="reference"
            )
        graph = await client.get_lineage(
            pb.GetLineageRequest(
                model=model,
                version=int(number),
                direction=pb.LINEAGE_DIRECTION_BOTH,
                max_depth=depth,
            )
        )
        return LineageGraph(
            root=reference,
            versions=[_version(v) for v in graph.versions],
            edges=[
                LineageEdge(
                    parent=_ref(e.parent),
                    child=_ref(e.child),
                    relation=_enum_name(pb.Relation.Name(e.relation), "RELATION_"),
                )
                for e in graph.edges
            ],
        )
