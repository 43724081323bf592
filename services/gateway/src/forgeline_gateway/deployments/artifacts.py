"""Registry versions as local files: what llama-server, Ollama or a vLLM container is given.

A deployment names a GGUF version (``registry_gguf``, ``registry_lora``) or an HF version
(``registry_model``, vLLM); before placing it the gateway pulls the version into its model
cache, one directory per version (``<model with / as -->/<number>``; a vLLM container mounts
the cache and reads the directory). Versions are immutable, so a cached one is reused as is; a
pull goes to a temporary directory renamed into place when complete (every file's digest
verified by the registry client), so an interrupted pull leaves nothing that looks usable.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import TypeVar

from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument
from forgeline_registry.client import RegistryClient

__all__ = ["RegistryArtifacts"]

SpecT = TypeVar("SpecT", LlamaCppSpec, OllamaSpec, VllmSpec)


class RegistryArtifacts:
    """Fetches registry versions into `cache_dir`."""

    def __init__(self, registry: RegistryClient | None, cache_dir: Path) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def localize(self, spec: SpecT) -> SpecT:
        """`spec` with its registry references replaced by cached file paths (for vLLM: the
        version's directory, which the spec carries privately to the backend)."""
        if isinstance(spec, LlamaCppSpec):
            return await self._localize_llamacpp(spec)
        if isinstance(spec, OllamaSpec) and spec.registry_gguf is not None:
            gguf = await self.gguf_file(spec.registry_gguf, "registry_gguf")
            return spec.model_copy(update={"gguf": str(gguf), "registry_gguf": None})
        if isinstance(spec, VllmSpec) and spec.registry_model is not None:
            directory = await self.version_directory(spec.registry_model, "registry_model")
            if not (directory / "config.json").is_file():
                raise InvalidArgument(
                    f"{spec.registry_model} is not an HF model (no config.json): vLLM containers "
                    "serve base, merged or fine-tuned versions",
                    field="registry_model",
                )
            return spec.with_model_directory(directory)
        return spec

    async def _localize_llamacpp(self, spec: LlamaCppSpec) -> LlamaCppSpec:
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

    async def version_directory(self, reference: str, field: str) -> Path:
        """The cache directory of the version `reference`, pulled if not cached yet."""
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
        return directory

    async def gguf_file(self, reference: str, field: str) -> Path:
        """The one ``.gguf`` file of the version `reference`, pulled if not cached yet."""
        directory = await self.version_directory(reference, field)
        files = sorted(directory.rglob("*.gguf"))
        if len(files) != 1:
            raise InvalidArgument(
                f"{reference} holds {len(files)} GGUF files; '{field}' needs a version with "
                "exactly one (a GGUF or GGUF adapter version made by the converter)",
                field=field,
            )
        return files[0]
