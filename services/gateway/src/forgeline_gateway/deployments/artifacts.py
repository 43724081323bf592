"""Registry versions as local files: what a llama-server started by the gateway needs.

A deployment names a GGUF version (``registry_gguf``, ``registry_lora``); before placing it the
gateway pulls the version into its model cache, one directory per version. Versions are immutable,
so a cached one is reused as is; a pull goes to a temporary directory renamed into place when
complete (every file's digest verified by the registry client), so an interrupted pull leaves
nothing that looks usable.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

from forgeline_gateway.deployments.spec import LlamaCppSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument
from forgeline_registry.client import RegistryClient

__all__ = ["RegistryArtifacts"]


class RegistryArtifacts:
    """Fetches registry GGUF versions into `cache_dir`."""

    def __init__(self, registry: RegistryClient | None, cache_dir: Path) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def localize(self, spec: LlamaCppSpec) -> LlamaCppSpec:
        """`spec` with its registry references replaced by cached file paths."""
        if spec.registry_gguf is None and not spec.registry_lora:
            return spec
        gguf = spec.gguf
        if spec.registry_gguf is not None:
            gguf = str(await self.gguf_file(spec.registry_gguf, "registry_gguf"))
        lora = list(spec.lora)
        for i, reference in enumerate(spec.registry_lora):
            lora.append(str(await self.gguf_file(reference, f"registry_lora[{i}]")))
        return spec.model_copy(
            update={"gguf": gguf, "registry_gguf": None, "lora": lora, "registry_lora": []}
        )

    async def gguf_file(self, reference: str, field: str) -> Path:
        """The one ``.gguf`` file of the version `reference`, pulled if not cached yet."""
        if self.registry is None:
            raise FailedPrecondition(
                f"'{field}' needs the registry: set FORGELINE_GATEWAY_REGISTRY_TARGET",
                field=field,
            )
        model, _, number = reference.rpartition(":")
        directory = self.cache_dir / model.replace("/", "--") / number
        lock = self._locks.setdefault(reference, asyncio.Lock())
        async with lock:
            if not directory.is_dir():
                partial = directory.with_name(f".{number}.{uuid.uuid4().hex}.partial")
                try:
                    await self.registry.pull(reference, partial)
                    partial.rename(directory)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
        files = sorted(directory.rglob("*.gguf"))
        if len(files) != 1:
            raise InvalidArgument(
                f"{reference} holds {len(files)} GGUF files; '{field}' needs a version with "
                "exactly one (a GGUF or GGUF adapter version made by the converter)",
                field=field,
            )
        return files[0]
