"""Registry versions as local files: what llama-server, Ollama or a vLLM container is given.

A deployment names a GGUF version (``registry_gguf``, ``registry_lora``: llama.cpp, Ollama) or
an HF version (``registry_model``, or the PEFT adapter ``registry_adapter``: vLLM); before
placing it the gateway pulls the version into its model cache, one directory per version
(``<model with / as +>/<number>``: ``+`` is in no model name, so no two names share a
directory; a vLLM container mounts the cache and reads the directory).
A pull goes to a temporary directory renamed into place when complete (every file's digest
verified by the registry client), with the version's digests recorded beside it
(``<number>.digests.json``), so an interrupted pull leaves nothing that looks usable. A cached
version is reused only when its files still have those digests: a file changed or added on
the host since the pull is not served; the version is pulled again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import TypeVar

from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument
from forgeline_registry_client.client import RegistryClient
from forgeline_registry_client.names import check_model_name

__all__ = ["RegistryArtifacts"]

SpecT = TypeVar("SpecT", LlamaCppSpec, OllamaSpec, VllmSpec)
GgufSpecT = TypeVar("GgufSpecT", LlamaCppSpec, OllamaSpec)

log = logging.getLogger(__name__)

_CHUNK = 4 << 20


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
            return await self._localize_gguf(spec)
        if isinstance(spec, OllamaSpec):
            return await self._localize_gguf(spec)
        if isinstance(spec, VllmSpec) and spec.registry_model is not None:
            directory = await self.version_directory(spec.registry_model, "registry_model")
            if not (directory / "config.json").is_file():
                raise InvalidArgument(
                    f"{spec.registry_model} is not an HF model (no config.json): vLLM containers "
                    "serve base, merged or fine-tuned versions",
                    field="registry_model",
                )
            return spec.with_model_directory(directory)
        if isinstance(spec, VllmSpec) and spec.registry_adapter is not None:
            directory = await self.version_directory(spec.registry_adapter, "registry_adapter")
            if not (directory / "adapter_config.json").is_file():
                raise InvalidArgument(
                    f"{spec.registry_adapter} is not an HF/PEFT adapter (no adapter_config.json):"
                    " vLLM loads PEFT adapter versions, not GGUF ones",
                    field="registry_adapter",
                )
            return spec.with_model_directory(directory)
        return spec

    async def _localize_gguf(self, spec: GgufSpecT) -> GgufSpecT:
        """A llama.cpp or Ollama spec with `registry_gguf` and `registry_lora` fetched: named by
        their files in `gguf` and `lora` (both backends take the same GGUF fields)."""
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
        directory = self.cache_directory(reference, field)
        digests = directory.with_name(f"{directory.name}.digests.json")
        lock = self._locks.setdefault(reference, asyncio.Lock())
        async with lock:
            if directory.is_dir() and not await asyncio.to_thread(_intact, directory, digests):
                log.warning(
                    "cached version changed on disk since it was pulled; pulling it again",
                    extra={"version": reference, "directory": str(directory)},
                )
                shutil.rmtree(directory)
            if not directory.is_dir():
                digests.unlink(missing_ok=True)
                partial = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.partial")
                try:
                    version = await self.registry.pull(reference, partial)
                    record = {a.path: a.sha256 for a in version.artifacts}
                    digests.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
                    partial.rename(directory)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
        return directory

    def cache_directory(self, reference: str, field: str) -> Path:
        """Where the version ``MODEL:NUMBER`` is cached; two names never share a directory."""
        model, _, number = reference.rpartition(":")
        check_model_name(model, field)
        if not number.isdigit():
            raise InvalidArgument(f"'{reference}' names no version number", field=field)
        return self.cache_dir / model.replace("/", "+") / number

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


def _intact(directory: Path, digests: Path) -> bool:
    """Whether ``directory`` holds exactly the files recorded in ``digests``, with their
    digests (a cache written before digests were recorded counts as changed)."""
    try:
        recorded = json.loads(digests.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    present = {
        path.relative_to(directory).as_posix(): path
        for path in directory.rglob("*")
        if path.is_file() or path.is_symlink()
    }
    if set(present) != set(recorded):
        return False
    for name, path in present.items():
        if path.is_symlink():
            return False
        sha = hashlib.sha256()
        with path.open("rb") as content:
            while chunk := content.read(_CHUNK):
                sha.update(chunk)
        if sha.hexdigest() != recorded[name]:
            return False
    return True
