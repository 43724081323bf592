"""The ``forgeline.registry.v1.RegistryService`` servicer: protobuf in, `Registry` calls, out.

Handlers stay thin: validation, the domain logic and its errors live in `service`; the kit's
error interceptor turns a raised `ForgelineError` into its gRPC status.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from forgeline_kit.errors import InvalidArgument
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2_grpc
from forgeline_registry.convert import (
    alias_to_pb,
    artifact_from_pb,
    download_grant_to_pb,
    enum_name,
    lineage_from_pb,
    model_to_pb,
    timestamp,
    upload_grant_to_pb,
    version_to_pb,
)
from forgeline_registry.service import NewVersion, Registry, VersionView
from forgeline_registry.storage.base import UploadedPart
from forgeline_registry_client.names import parse_reference

__all__ = ["RegistryServicer"]

Context = grpc.aio.ServicerContext[object, object]

_UPDATABLE = frozenset({"description", "labels"})


def _mask(paths: list[str], field: str) -> set[str]:
    unknown = sorted(set(paths) - _UPDATABLE)
    if unknown:
        raise InvalidArgument(
            f"{field} names {', '.join(unknown)}; only description and labels can change",
            field=field,
        )
    return set(paths) or set(_UPDATABLE)


def _full(view: pb.VersionView.ValueType, default_full: bool) -> bool:
    if view == pb.VERSION_VIEW_UNSPECIFIED:
        return default_full
    return view == pb.VERSION_VIEW_FULL


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves a `Registry` over gRPC."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def _resolve_ref(self, ref: common_pb2.VersionRef, field: str) -> VersionView:
        selector = ref.WhichOneof("selector")
        if not ref.model:
            raise InvalidArgument(f"{field}.model is empty", field=f"{field}.model")
        if selector == "version":
            return await self.registry.resolve(ref.model, version=ref.version)
        return await self.registry.resolve(ref.model, alias=ref.alias or None)

    # --- models

    async def CreateModel(self, request: pb.CreateModelRequest, context: Context) -> pb.Model:  # noqa: N802
        model = request.model
        view = await self.registry.create_model(model.name, model.description, dict(model.labels))
        return model_to_pb(view)

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.Model:  # noqa: N802
        return model_to_pb(await self.registry.get_model(request.name))

    async def ListModels(  # noqa: N802 (generated name)
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        views, token = await self.registry.list_models(
            request.page_size, request.page_token, request.name_prefix, dict(request.labels)
        )
        return pb.ListModelsResponse(models=[model_to_pb(v) for v in views], next_page_token=token)

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: Context) -> pb.Model:  # noqa: N802
        fields = _mask(list(request.update_mask.paths), "update_mask")
        view = await self.registry.update_model(
            request.model.name,
            request.model.description if "description" in fields else None,
            dict(request.model.labels) if "labels" in fields else None,
        )
        return model_to_pb(view)

    async def DeleteModel(  # noqa: N802 (generated name)
        self, request: pb.DeleteModelRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.registry.delete_model(request.name, request.force)
        return empty_pb2.Empty()

    # --- uploads

    async def BeginVersion(  # noqa: N802 (generated name)
        self, request: pb.BeginVersionRequest, context: Context
    ) -> pb.BeginVersionResponse:
        resolved = []
        for index, parent in enumerate(request.lineage.parents):
            view = await self._resolve_ref(parent.version, f"lineage.parents[{index}].version")
            resolved.append((view.manifest.model, view.manifest.number))
        new = NewVersion(
            model=request.model,
            kind=enum_name(pb.VersionKind, request.kind, "kind"),
            artifacts=tuple(
                artifact_from_pb(a, f"artifacts[{i}]") for i, a in enumerate(request.artifacts)
            ),
            lineage=lineage_from_pb(request.lineage, resolved),
            labels=dict(request.labels),
            description=request.description,
            request_id=request.request_id,
            create_model=request.create_model,
            accept_local_files=request.transfer.accept_local_files,
            part_size_bytes=max(request.transfer.part_size_bytes, 0),
        )
        result = await self.registry.begin_version(new)
        if result.committed is not None:
            return pb.BeginVersionResponse(committed_version=version_to_pb(result.committed))
        response = pb.BeginVersionResponse(
            upload_id=result.upload_id,
            grants=[upload_grant_to_pb(g) for g in result.grants],
            present_sha256=list(result.present),
        )
        if result.expire_time is not None:
            response.expire_time.CopyFrom(timestamp(result.expire_time))
        return response

    async def RenewUploadGrants(  # noqa: N802 (generated name)
        self, request: pb.RenewUploadGrantsRequest, context: Context
    ) -> pb.RenewUploadGrantsResponse:
        grants, expiry = await self.registry.renew_upload_grants(
            request.upload_id, list(request.sha256), request.transfer.accept_local_files
        )
        return pb.RenewUploadGrantsResponse(
            grants=[upload_grant_to_pb(g) for g in grants], expire_time=timestamp(expiry)
        )

    async def CommitVersion(self, request: pb.CommitVersionRequest, context: Context) -> pb.Version:  # noqa: N802
        parts = {
            upload.sha256: [UploadedPart(p.part_number, p.etag) for p in upload.parts]
            for upload in request.multipart_uploads
        }
        return version_to_pb(await self.registry.commit_version(request.upload_id, parts))

    async def AbortVersion(  # noqa: N802 (generated name)
        self, request: pb.AbortVersionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.registry.abort_version(request.upload_id)
        return empty_pb2.Empty()

    # --- versions

    async def GetVersion(self, request: pb.GetVersionRequest, context: Context) -> pb.Version:  # noqa: N802
        view = await self.registry.get_version(request.model, request.version)
        return version_to_pb(view, _full(request.view, True))

    async def ListVersions(  # noqa: N802 (generated name)
        self, request: pb.ListVersionsRequest, context: Context
    ) -> pb.ListVersionsResponse:
        order = request.order_by.strip().lower()
        if order not in ("", "number", "number asc", "number desc"):
            raise InvalidArgument(
                f"order_by {request.order_by!r}: use 'number' or 'number desc'", field="order_by"
            )
        parent = None
        if request.HasField("parent"):
            view = await self._resolve_ref(request.parent, "parent")
            parent = (view.manifest.model, view.manifest.number)
        views, token = await self.registry.list_versions(
            request.model,
            page_size=request.page_size,
            page_token=request.page_token,
            kinds=[enum_name(pb.VersionKind, k, "kinds") for k in request.kinds],
            labels=dict(request.labels),
            parent=parent,
            relation=(
                enum_name(pb.Relation, request.relation, "relation") if request.relation else ""
            ),
            descending=order == "number desc",
        )
        full = _full(request.view, False)
        return pb.ListVersionsResponse(
            versions=[version_to_pb(v, full) for v in views], next_page_token=token
        )

    async def ResolveVersion(  # noqa: N802 (generated name)
        self, request: pb.ResolveVersionRequest, context: Context
    ) -> pb.Version:
        target = request.WhichOneof("target")
        if target == "reference":
            ref = parse_reference(request.reference)
            view = await self.registry.resolve(ref.model, ref.version, ref.alias)
        elif target == "ref":
            view = await self._resolve_ref(request.ref, "ref")
        else:
            raise InvalidArgument("name the version: set reference or ref", field="reference")
        return version_to_pb(view, _full(request.view, True))

    async def UpdateVersion(  # noqa: N802 (generated name)
        self, request: pb.UpdateVersionRequest, context: Context
    ) -> pb.Version:
        fields = _mask(list(request.update_mask.paths), "update_mask")
        view = await self.registry.update_version(
            request.version.model,
            request.version.number,
            request.version.description if "description" in fields else None,
            dict(request.version.labels) if "labels" in fields else None,
        )
        return version_to_pb(view)

    async def DeleteVersion(  # noqa: N802 (generated name)
        self, request: pb.DeleteVersionRequest, context: Context
    ) -> pb.DeleteVersionResponse:
        collected, reclaimed = await self.registry.delete_version(
            request.model, request.version, request.force
        )
        return pb.DeleteVersionResponse(collected_blobs=collected, reclaimed_bytes=reclaimed)

    # --- aliases

    async def SetAlias(self, request: pb.SetAliasRequest, context: Context) -> pb.Alias:  # noqa: N802
        expected = request.expected_version if request.HasField("expected_version") else None
        name, record = await self.registry.set_alias(
            request.model, request.alias, request.version, expected
        )
        return alias_to_pb(request.model, name, record)

    async def DeleteAlias(  # noqa: N802 (generated name)
        self, request: pb.DeleteAliasRequest, context: Context
    ) -> empty_pb2.Empty:
        expected = request.expected_version if request.HasField("expected_version") else None
        await self.registry.delete_alias(request.model, request.alias, expected)
        return empty_pb2.Empty()

    # --- lineage and downloads

    async def GetLineage(  # noqa: N802 (generated name)
        self, request: pb.GetLineageRequest, context: Context
    ) -> pb.GetLineageResponse:
        direction = request.direction
        edges, views = await self.registry.get_lineage(
            request.model,
            request.version,
            ancestors=direction != pb.LINEAGE_DIRECTION_DESCENDANTS,
            descendants=direction != pb.LINEAGE_DIRECTION_ANCESTORS,
            max_depth=request.max_depth,
        )
        full = _full(request.view, False)
        return pb.GetLineageResponse(
            edges=[
                pb.LineageEdge(
                    parent=common_pb2.VersionRef(model=p[0], version=p[1]),
                    child=common_pb2.VersionRef(model=c[0], version=c[1]),
                    relation=pb.Relation.Value(relation),
                )
                for p, c, relation in edges
            ],
            versions=[version_to_pb(v, full) for v in views],
        )

    async def GetDownloadGrants(  # noqa: N802 (generated name)
        self, request: pb.GetDownloadGrantsRequest, context: Context
    ) -> pb.GetDownloadGrantsResponse:
        view = await self._resolve_ref(request.version, "version")
        grants = await self.registry.download_grants(
            view, list(request.paths), request.transfer.accept_local_files
        )
        return pb.GetDownloadGrantsResponse(
            version=version_to_pb(view),
            grants=[download_grant_to_pb(a, g) for a, g in grants],
        )
