"""File bytes kept in the model registry: one dataset model per file, ``files/<file id>``.

The registry is the one store of bytes in Forgeline; the gateway keeps only the record
(`store.FileRecord`). Every registry failure becomes an error a Files API user can act on:
the registry being unreachable is a 503 naming the registry (its address stays in the log).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from forgeline_gateway.errors import BadGateway
from forgeline_kit.errors import (
    DeadlineExceeded,
    ForgelineError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

__all__ = ["RegistryFiles", "RegistryUnavailable", "file_model"]

log = logging.getLogger(__name__)

#: How long one registry call may take before the client is told the registry is unavailable.
REGISTRY_TIMEOUT_SECONDS = 60.0


def file_model(file_id: str) -> str:
    """The registry model holding the file `file_id`."""
    return f"files/{file_id}"


class RegistryUnavailable(Unavailable):
    """The registry could not be reached (or is not configured): a 503."""

    openai_code = "registry_unavailable"


class RegistryFiles:
    """Pushes, pulls and deletes file versions. `target` None means no registry is configured:
    every call is then a 503 saying how to configure one."""

    def __init__(
        self,
        target: str | None,
        *,
        timeout: float = REGISTRY_TIMEOUT_SECONDS,
        local_files: bool = False,
    ) -> None:
        # Fail fast while the registry is down (a 503 now, not a request hanging for a minute).
        # `local_files`: the registry shares this host's filesystem (settings.registry_local_files).
        self._client = (
            RegistryClient(
                target, accept_local_files=local_files, wait_for_ready=False, timeout=timeout
            )
            if target
            else None
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def put(
        self, file_id: str, directory: Path, labels: dict[str, str]
    ) -> common_pb2.ArtifactRef:
        """Store the one file in `directory` as version 1 of `file_model(file_id)`."""
        async with self._calling("stored") as client:
            version = await client.push(
                directory,
                file_model(file_id),
                kind=pb.VERSION_KIND_DATASET,
                labels=labels,
                description="A file uploaded through the gateway's Files API.",
                request_id=file_id,
            )
        (artifact,) = version.artifacts
        return common_pb2.ArtifactRef(
            version=common_pb2.VersionRef(model=version.model, version=version.number),
            path=artifact.path,
        )

    async def fetch(self, ref: common_pb2.ArtifactRef, directory: Path) -> Path:
        """Download the file `ref` into `directory`; its local path."""
        async with self._calling("read") as client:
            await client.pull(
                f"{ref.version.model}:{ref.version.version}", directory, paths=[ref.path]
            )
        return directory / ref.path

    async def chat_template(self, reference: str) -> tuple[str, str]:
        """The registry version `reference` resolves to (``model:number``) and the chat template
        recorded in its lineage ('' when none was).

        Raises:
            InvalidArgument: no such model or version (``param: model``).
        """
        async with self._calling("previewed") as client:
            try:
                version = await client.resolve_version(
                    pb.ResolveVersionRequest(reference=reference, view=pb.VERSION_VIEW_BASIC)
                )
            except (NotFound, InvalidArgument) as error:
                raise InvalidArgument(
                    f"the model '{reference}' is not in the registry ({error.message}): name a "
                    "base model of `forgeline models list`",
                    field="model",
                ) from error
        return f"{version.model}:{version.number}", version.lineage.chat_template

    async def delete(self, file_id: str) -> None:
        """Delete the file's model and every version of it (gone already is fine)."""
        async with self._calling("deleted") as client:
            try:
                await client.delete_model(
                    pb.DeleteModelRequest(name=file_model(file_id), force=True)
                )
            except NotFound:
                log.info("file %s was not in the registry any more", file_id)

    @asynccontextmanager
    async def _calling(self, done: str) -> AsyncIterator[RegistryClient]:
        if self._client is None:
            raise RegistryUnavailable(
                f"The file cannot be {done}: this gateway has no model registry configured "
                "(set FORGELINE_GATEWAY_REGISTRY_TARGET)."
            )
        try:
            yield self._client
        except (Unavailable, DeadlineExceeded) as error:
            log.warning("registry %s failed: %s", self._client.target, error)
            raise RegistryUnavailable(
                f"The model registry is unavailable, so the file could not be {done}; "
                "try again shortly."
            ) from error
        except (NotFound, InvalidArgument):
            raise
        except ForgelineError as error:
            log.error("registry %s refused a files call", self._client.target, exc_info=error)
            raise BadGateway(
                f"The model registry refused the request, so the file could not be {done}: "
                f"{error.message}"
            ) from error
