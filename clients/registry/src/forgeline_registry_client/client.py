"""The registry client for services and the CLI: every registry call, and pushing a directory
as a version, pulling one back.

::

    # On the registry's host with filesystem storage; elsewhere leave accept_local_files off.
    async with RegistryClient("127.0.0.1:50051", accept_local_files=True) as registry:
        version = await registry.push(Path("tiny-llama/"), "tiny-llama")
        await registry.pull("tiny-llama@latest", Path("out/"))

Bytes go straight between this process and the store through the registry's grants, never over
gRPC; every downloaded file is verified against its digest before it appears.

Every call of ``forgeline.registry.v1.RegistryService`` is a method here (``get_model``,
``resolve_version``, ...), taking the request message and returning the response: callers never
hold the gRPC stub or channel, so this class is the one place that talks to the registry.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from forgeline_kit.grpc.client import make_channel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2_grpc
from forgeline_registry_client.importer import guess_version_kind, safe_target, scan_directory
from forgeline_registry_client.transfer import Transfers, hash_file

__all__ = ["PushPlan", "RegistryClient", "TransferProgress"]


class TransferProgress:
    """What a transfer reports: phases with a byte total, then bytes as they move."""

    def start(self, phase: str, total: int) -> None:
        """A phase (``hashing``, ``uploading``, ``downloading``) of `total` bytes begins."""

    def advance(self, count: int) -> None:
        """`count` more bytes moved (may be called from worker threads)."""

    def finish(self) -> None:
        """The phase is over."""


@dataclass(frozen=True)
class PushPlan:
    """A directory's files with their digests, as declared at BeginVersion."""

    artifacts: list[pb.Artifact]
    files: dict[str, Path]


class RegistryClient:
    """Registry calls plus transfers. Use as an async context manager.

    Args:
        target: the registry's gRPC ``host:port``.
        accept_local_files: ask for ``LocalFile`` grants (host paths of the registry's blobs and
            staging files). Only a caller on the registry's own host, with the registry on the
            filesystem driver (the embedded default, ``forgeline up``), can use them: elsewhere
            the path names a file of another machine or container. Off by default, so a client
            asks for them knowingly; a filesystem registry refuses a client that does not
            (FAILED_PRECONDITION), and an S3 registry never grants them (presigned URLs only).
        part_size_bytes: preferred part size of uploads to S3; 0 lets the registry choose.
        parallel: how many transfers (files, parts) run at once.
        timeout: deadline of each registry call, in seconds.
        wait_for_ready: let calls wait for the registry to come up instead of failing at once.
    """

    def __init__(
        self,
        target: str,
        *,
        accept_local_files: bool = False,
        part_size_bytes: int = 0,
        parallel: int = 4,
        timeout: float = 60.0,
        wait_for_ready: bool = True,
    ) -> None:
        self.target = target
        self.transfer_options = pb.TransferOptions(
            accept_local_files=accept_local_files, part_size_bytes=part_size_bytes
        )
        self._channel = make_channel(target, default_timeout=timeout, wait_for_ready=wait_for_ready)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.transfers = Transfers(parallel)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel and the HTTP connections."""
        await self._channel.close()
        self.transfers.close()

    # --- registry calls, one per RPC (the contract's comments say more). `deadline`: the call's
    # gRPC deadline in seconds (the registry sees it too), the client's `timeout` when None.

    async def create_model(
        self, request: pb.CreateModelRequest, *, deadline: float | None = None
    ) -> pb.Model:
        """Create a model; ALREADY_EXISTS when the name is taken."""
        return await self._stub.CreateModel(request, timeout=deadline)

    async def get_model(
        self, request: pb.GetModelRequest, *, deadline: float | None = None
    ) -> pb.Model:
        """One model."""
        return await self._stub.GetModel(request, timeout=deadline)

    async def list_models(
        self, request: pb.ListModelsRequest, *, deadline: float | None = None
    ) -> pb.ListModelsResponse:
        """A page of models, in name order."""
        return await self._stub.ListModels(request, timeout=deadline)

    async def update_model(
        self, request: pb.UpdateModelRequest, *, deadline: float | None = None
    ) -> pb.Model:
        """Change a model's description or labels."""
        return await self._stub.UpdateModel(request, timeout=deadline)

    async def delete_model(
        self, request: pb.DeleteModelRequest, *, deadline: float | None = None
    ) -> None:
        """Delete a model (with its versions when `force` is set)."""
        await self._stub.DeleteModel(request, timeout=deadline)

    async def begin_version(
        self, request: pb.BeginVersionRequest, *, deadline: float | None = None
    ) -> pb.BeginVersionResponse:
        """Declare a version's artifacts; grants for the blobs the store lacks (see `push`)."""
        return await self._stub.BeginVersion(request, timeout=deadline)

    async def renew_upload_grants(
        self, request: pb.RenewUploadGrantsRequest, *, deadline: float | None = None
    ) -> pb.RenewUploadGrantsResponse:
        """Fresh grants for an open upload."""
        return await self._stub.RenewUploadGrants(request, timeout=deadline)

    async def commit_version(
        self, request: pb.CommitVersionRequest, *, deadline: float | None = None
    ) -> pb.Version:
        """Verify an upload's blobs and make it the model's next version."""
        return await self._stub.CommitVersion(request, timeout=deadline)

    async def abort_version(
        self, request: pb.AbortVersionRequest, *, deadline: float | None = None
    ) -> None:
        """Abandon an open upload."""
        await self._stub.AbortVersion(request, timeout=deadline)

    async def get_version(
        self, request: pb.GetVersionRequest, *, deadline: float | None = None
    ) -> pb.Version:
        """One version by number."""
        return await self._stub.GetVersion(request, timeout=deadline)

    async def list_versions(
        self, request: pb.ListVersionsRequest, *, deadline: float | None = None
    ) -> pb.ListVersionsResponse:
        """A page of a model's versions, filtered."""
        return await self._stub.ListVersions(request, timeout=deadline)

    async def resolve_version(
        self, request: pb.ResolveVersionRequest, *, deadline: float | None = None
    ) -> pb.Version:
        """The version ``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS`` names."""
        return await self._stub.ResolveVersion(request, timeout=deadline)

    async def update_version(
        self, request: pb.UpdateVersionRequest, *, deadline: float | None = None
    ) -> pb.Version:
        """Change a version's description or labels."""
        return await self._stub.UpdateVersion(request, timeout=deadline)

    async def delete_version(
        self, request: pb.DeleteVersionRequest, *, deadline: float | None = None
    ) -> pb.DeleteVersionResponse:
        """Delete a version and collect the blobs nothing else references."""
        return await self._stub.DeleteVersion(request, timeout=deadline)

    async def set_alias(
        self, request: pb.SetAliasRequest, *, deadline: float | None = None
    ) -> pb.Alias:
        """Point an alias at a version (compare-and-swap with `expected_version`)."""
        return await self._stub.SetAlias(request, timeout=deadline)

    async def delete_alias(
        self, request: pb.DeleteAliasRequest, *, deadline: float | None = None
    ) -> None:
        """Remove an alias."""
        await self._stub.DeleteAlias(request, timeout=deadline)

    async def get_lineage(
        self, request: pb.GetLineageRequest, *, deadline: float | None = None
    ) -> pb.GetLineageResponse:
        """A version's ancestors and/or descendants."""
        return await self._stub.GetLineage(request, timeout=deadline)

    async def get_download_grants(
        self, request: pb.GetDownloadGrantsRequest, *, deadline: float | None = None
    ) -> pb.GetDownloadGrantsResponse:
        """Grants to read a version's artifacts straight from the store (see `pull`)."""
        return await self._stub.GetDownloadGrants(request, timeout=deadline)

    # --- push

    async def plan(
        self, directory: Path, progress: TransferProgress | None = None
    ) -> tuple[PushPlan, pb.VersionKind.ValueType]:
        """Scan and hash a directory: its artifacts and the version kind it looks like."""
        progress = progress or TransferProgress()
        local = await asyncio.to_thread(scan_directory, directory)
        progress.start("hashing", sum(a.file.stat().st_size for a in local))
        artifacts = []
        for item in local:
            digest, size = await asyncio.to_thread(hash_file, item.file, progress.advance)
            artifacts.append(
                pb.Artifact(
                    path=item.path,
                    kind=item.kind,
                    sha256=digest,
                    size_bytes=size,
                    media_type=item.media_type,
                    gguf_file_type=item.gguf_file_type,
                )
            )
        progress.finish()
        return PushPlan(artifacts, {a.path: a.file for a in local}), guess_version_kind(local)

    async def push(
        self,
        directory: Path,
        model: str,
        *,
        kind: pb.VersionKind.ValueType = pb.VERSION_KIND_UNSPECIFIED,
        lineage: pb.Lineage | None = None,
        labels: dict[str, str] | None = None,
        description: str = "",
        request_id: str = "",
        create_model: bool = True,
        progress: TransferProgress | None = None,
        after_upload: Callable[[pb.BeginVersionResponse], None] | None = None,
    ) -> pb.Version:
        """Push every file of `directory` as the next version of `model`."""
        progress = progress or TransferProgress()
        plan, guessed = await self.plan(directory, progress)
        return await self.push_plan(
            plan,
            model,
            kind=kind or guessed,
            lineage=lineage,
            labels=labels,
            description=description,
            request_id=request_id,
            create_model=create_model,
            progress=progress,
            after_upload=after_upload,
        )

    async def push_plan(
        self,
        plan: PushPlan,
        model: str,
        *,
        kind: pb.VersionKind.ValueType,
        lineage: pb.Lineage | None = None,
        labels: dict[str, str] | None = None,
        description: str = "",
        request_id: str = "",
        create_model: bool = True,
        progress: TransferProgress | None = None,
        after_upload: Callable[[pb.BeginVersionResponse], None] | None = None,
    ) -> pb.Version:
        """Push files already hashed (`plan`) as the next version of `model`."""
        progress = progress or TransferProgress()
        begin = await self.begin_version(
            pb.BeginVersionRequest(
                model=model,
                create_model=create_model,
                kind=kind,
                artifacts=plan.artifacts,
                lineage=lineage,
                labels=labels,
                description=description,
                request_id=request_id or str(uuid.uuid4()),
                transfer=self.transfer_options,
            )
        )
        if begin.HasField("committed_version"):
            return begin.committed_version
        multipart = await self.upload(begin, plan, progress)
        if after_upload is not None:
            after_upload(begin)
        return await self.commit_version(
            pb.CommitVersionRequest(upload_id=begin.upload_id, multipart_uploads=multipart)
        )

    async def upload(
        self,
        begin: pb.BeginVersionResponse,
        plan: PushPlan,
        progress: TransferProgress | None = None,
    ) -> list[pb.CompletedMultipartUpload]:
        """Send the blobs `begin` asks for; the multipart reports for CommitVersion."""
        progress = progress or TransferProgress()
        file_of = {a.sha256: plan.files[a.path] for a in plan.artifacts}
        progress.start("uploading", sum(g.size_bytes for g in begin.grants))
        reports = []
        for grant in begin.grants:
            parts = await asyncio.to_thread(
                self.transfers.upload, grant, file_of[grant.sha256], progress.advance
            )
            if grant.WhichOneof("method") == "multipart":
                reports.append(pb.CompletedMultipartUpload(sha256=grant.sha256, parts=parts))
        progress.finish()
        return reports

    # --- pull

    async def pull(
        self,
        reference: str,
        directory: Path,
        *,
        paths: Sequence[str] = (),
        progress: TransferProgress | None = None,
    ) -> pb.Version:
        """Write the artifacts of `reference` (``MODEL[:VERSION|@ALIAS]``) under `directory`."""
        progress = progress or TransferProgress()
        version = await self.resolve_version(
            pb.ResolveVersionRequest(reference=reference, view=pb.VERSION_VIEW_BASIC)
        )
        answer = await self.get_download_grants(
            pb.GetDownloadGrantsRequest(
                version=common_pb2.VersionRef(model=version.model, version=version.number),
                paths=list(paths),
                transfer=self.transfer_options,
            )
        )
        targets = [safe_target(directory, g.artifact.path) for g in answer.grants]
        progress.start("downloading", sum(g.artifact.size_bytes for g in answer.grants))
        for grant, target in zip(answer.grants, targets, strict=True):
            await asyncio.to_thread(self.transfers.download, grant, target, progress.advance)
        progress.finish()
        return answer.version
