"""Conversions between the registry's protobuf messages and its domain records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry.manifests import (
    AliasRecord,
    ArtifactRecord,
    DatasetRecord,
    LineageRecord,
    ParentRecord,
    ProvenanceFileRecord,
    ProvenanceRecord,
)
from forgeline_registry.service import ModelView, VersionView
from forgeline_registry.storage.base import (
    DownloadGrantSpec,
    HttpRequestSpec,
    UploadGrantSpec,
)

__all__ = [
    "alias_to_pb",
    "artifact_from_pb",
    "artifact_to_pb",
    "download_grant_to_pb",
    "enum_name",
    "lineage_from_pb",
    "model_to_pb",
    "timestamp",
    "upload_grant_to_pb",
    "version_to_pb",
]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def enum_name(enum: Any, value: int, field: str) -> str:
    """The proto name of an enum value; INVALID_ARGUMENT for a number this build does not know."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field} has the unknown value {value}", field=field) from None


def _enum_value(enum: Any, name: str) -> int:
    try:
        return int(enum.Value(name))
    except ValueError:
        return 0


def artifact_from_pb(artifact: pb.Artifact, field: str) -> ArtifactRecord:
    """An artifact declared by a writer."""
    return ArtifactRecord(
        path=artifact.path,
        kind=enum_name(pb.ArtifactKind, artifact.kind, f"{field}.kind"),
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        media_type=artifact.media_type,
        gguf_file_type=artifact.gguf_file_type,
        annotations=dict(artifact.annotations),
    )


def artifact_to_pb(artifact: ArtifactRecord) -> pb.Artifact:
    """An artifact as the API shows it."""
    return pb.Artifact(
        path=artifact.path,
        kind=_enum_value(pb.ArtifactKind, artifact.kind),  # type: ignore[arg-type]
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        media_type=artifact.media_type,
        gguf_file_type=artifact.gguf_file_type,
        annotations=artifact.annotations,
    )


def lineage_from_pb(lineage: pb.Lineage, resolved: list[tuple[str, int]]) -> LineageRecord:
    """A writer's lineage, with its parents already resolved to (model, number)."""
    return LineageRecord(
        parents=tuple(
            ParentRecord(
                model=model,
                version=number,
                relation=enum_name(pb.Relation, parent.relation, f"lineage.parents[{i}].relation"),
            )
            for i, (parent, (model, number)) in enumerate(
                zip(lineage.parents, resolved, strict=True)
            )
        ),
        datasets=tuple(
            DatasetRecord(
                name=d.name, sha256=d.sha256, format=d.format, record_count=d.record_count
            )
            for d in lineage.datasets
        ),
        training_config=(
            json_format.MessageToDict(lineage.training_config)
            if lineage.HasField("training_config")
            else None
        ),
        template=lineage.template,
        chat_template=lineage.chat_template,
        metrics=dict(lineage.metrics),
        tool_versions=dict(lineage.tool_versions),
        produced_by=lineage.produced_by,
        provenance=(
            _provenance_from_pb(lineage.provenance) if lineage.HasField("provenance") else None
        ),
    )


def _provenance_from_pb(provenance: pb.Provenance) -> ProvenanceRecord:
    return ProvenanceRecord(
        hub=provenance.hub,
        repo_id=provenance.repo_id,
        revision=provenance.revision,
        commit=provenance.commit,
        endpoint=provenance.endpoint,
        files=tuple(
            ProvenanceFileRecord(
                path=f.path, sha256=f.sha256, size_bytes=f.size_bytes, hub_digest=f.hub_digest
            )
            for f in provenance.files
        ),
    )


def _provenance_to_pb(provenance: ProvenanceRecord) -> pb.Provenance:
    return pb.Provenance(
        hub=provenance.hub,
        repo_id=provenance.repo_id,
        revision=provenance.revision,
        commit=provenance.commit,
        endpoint=provenance.endpoint,
        files=[
            pb.ProvenanceFile(
                path=f.path, sha256=f.sha256, size_bytes=f.size_bytes, hub_digest=f.hub_digest
            )
            for f in provenance.files
        ],
    )


def _lineage_to_pb(lineage: LineageRecord) -> pb.Lineage:
    message = pb.Lineage(
        parents=[
            pb.Parent(
                version=common_pb2.VersionRef(model=p.model, version=p.version),
                relation=_enum_value(pb.Relation, p.relation),  # type: ignore[arg-type]
            )
            for p in lineage.parents
        ],
        datasets=[
            pb.DatasetDigest(
                name=d.name, sha256=d.sha256, format=d.format, record_count=d.record_count
            )
            for d in lineage.datasets
        ],
        template=lineage.template,
        chat_template=lineage.chat_template,
        metrics=lineage.metrics,
        tool_versions=lineage.tool_versions,
        produced_by=lineage.produced_by,
    )
    if lineage.training_config is not None:
        config = struct_pb2.Struct()
        config.update(lineage.training_config)
        message.training_config.CopyFrom(config)
    if lineage.provenance is not None:
        message.provenance.CopyFrom(_provenance_to_pb(lineage.provenance))
    return message


def version_to_pb(view: VersionView, full: bool = True) -> pb.Version:
    """A version as the API shows it; without artifacts in the BASIC view."""
    manifest = view.manifest
    return pb.Version(
        model=manifest.model,
        number=manifest.number,
        kind=_enum_value(pb.VersionKind, manifest.kind),  # type: ignore[arg-type]
        state=pb.VERSION_STATE_DELETING if manifest.deleted else pb.VERSION_STATE_READY,
        artifacts=[artifact_to_pb(a) for a in manifest.artifacts] if full else [],
        lineage=_lineage_to_pb(manifest.lineage),
        labels=manifest.labels,
        description=manifest.description,
        create_time=timestamp(manifest.create_time),
        aliases=list(view.aliases),
        manifest_sha256=manifest.content_sha256(),
        size_bytes=manifest.size_bytes,
        artifact_count=len(manifest.artifacts),
    )


def model_to_pb(view: ModelView) -> pb.Model:
    """A model as the API shows it."""
    return pb.Model(
        name=view.record.name,
        description=view.record.description,
        labels=view.record.labels,
        aliases=view.aliases,
        latest_version=view.latest_version,
        version_count=view.version_count,
        create_time=timestamp(view.record.create_time),
        update_time=timestamp(view.update_time),
    )


def alias_to_pb(model: str, name: str, record: AliasRecord) -> pb.Alias:
    """An alias as the API shows it."""
    return pb.Alias(
        model=model, name=name, version=record.version, update_time=timestamp(record.update_time)
    )


def _http(spec: HttpRequestSpec) -> pb.HttpRequest:
    return pb.HttpRequest(method=spec.method, url=spec.url, headers=spec.headers)


def upload_grant_to_pb(grant: UploadGrantSpec) -> pb.UploadGrant:
    """An upload grant as the API shows it."""
    message = pb.UploadGrant(
        sha256=grant.sha256, size_bytes=grant.size_bytes, expire_time=timestamp(grant.expire_time)
    )
    if grant.local_path is not None:
        message.local_file.path = grant.local_path
    elif grant.put is not None:
        message.put.CopyFrom(_http(grant.put))
    elif grant.parts is not None:
        message.multipart.part_size_bytes = grant.part_size_bytes
        for part in grant.parts:
            message.multipart.parts.append(
                pb.UploadPart(
                    part_number=part.part_number,
                    offset=part.offset,
                    size_bytes=part.size_bytes,
                    request=_http(part.request),
                )
            )
    return message


def download_grant_to_pb(artifact: ArtifactRecord, grant: DownloadGrantSpec) -> pb.DownloadGrant:
    """A download grant as the API shows it."""
    message = pb.DownloadGrant(
        artifact=artifact_to_pb(artifact), expire_time=timestamp(grant.expire_time)
    )
    if grant.local_path is not None:
        message.local_file.path = grant.local_path
    elif grant.parts is not None:
        # An empty blob is one empty part, so the oneof is set even then.
        message.multipart.SetInParent()
        for part in grant.parts:
            message.multipart.parts.append(
                pb.DownloadPart(
                    offset=part.offset, size_bytes=part.size_bytes, request=_http(part.request)
                )
            )
    return message
