"""What a deployment may point the gateway at: files and servers the operator chose.

An admin key creates deployments, and a deployment names files on the gateway host (``gguf``,
``lora``) and servers the gateway will send requests and models to (``urls``, ``url``). Left
open, that is a way to read any file of the host (an Ollama deployment pushes the "GGUF" it is
given to a server the caller also chooses) and to make the gateway call any address it reaches
(SSRF). So a deployment's local files must lie in the model cache or a directory the operator
lists (``MODEL_DIRS``), after symlinks are resolved, and its servers must be on loopback, one of
the configured backends (``VLLM_URLS``, ``OLLAMA_URL``) or a host the operator lists
(``BACKEND_HOSTS``). Registry versions (``registry_gguf``...) are always allowed: the gateway
fetches them into its own cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from forgeline_gateway.deployments.spec import LlamaCppSpec, OllamaSpec, VllmSpec
from forgeline_gateway.settings import GatewaySettings, is_loopback
from forgeline_kit.errors import InvalidArgument

__all__ = ["DeploymentBoundaries"]


@dataclass(frozen=True)
class DeploymentBoundaries:
    """The directories and backend hosts deployments may name."""

    model_dirs: tuple[Path, ...]
    backend_hosts: frozenset[str]

    @classmethod
    def of(cls, settings: GatewaySettings) -> DeploymentBoundaries:
        """The operator's choices in `settings`."""
        configured = [*settings.vllm_urls, *([settings.ollama_url] if settings.ollama_url else [])]
        hosts = {urlsplit(url).hostname or "" for url in configured} | set(settings.backend_hosts)
        return cls(
            model_dirs=tuple(d.resolve() for d in (settings.model_cache, *settings.model_dirs)),
            backend_hosts=frozenset(host.lower() for host in hosts if host),
        )

    def check(self, spec: LlamaCppSpec | OllamaSpec | VllmSpec) -> None:
        """Refuse a spec that names a file or a server outside the boundaries.

        Raises:
            InvalidArgument: naming the field, the value and the setting that would allow it.
        """
        for field, path in _files(spec):
            self._check_file(field, path)
        for field, url in _servers(spec):
            self._check_server(field, url)

    def _check_file(self, field: str, path: str) -> None:
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(directory) for directory in self.model_dirs):
            allowed = ", ".join(str(d) for d in self.model_dirs)
            raise InvalidArgument(
                f"'{field}' names {path}, which is outside the directories deployments may "
                f"serve files from ({allowed}). Deploy a registry version instead "
                "(registry_gguf, registry_lora), or have the operator add the directory to "
                "FORGELINE_GATEWAY_MODEL_DIRS",
                field=field,
            )

    def _check_server(self, field: str, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        if is_loopback(host) or host in self.backend_hosts:
            return
        raise InvalidArgument(
            f"'{field}' names the server {host}, which is not one of the backends this gateway "
            "may call (loopback, FORGELINE_GATEWAY_VLLM_URLS, FORGELINE_GATEWAY_OLLAMA_URL). "
            "Have the operator add it to FORGELINE_GATEWAY_BACKEND_HOSTS",
            field=field,
        )


def _files(spec: LlamaCppSpec | OllamaSpec | VllmSpec) -> Iterator[tuple[str, str]]:
    if isinstance(spec, LlamaCppSpec | OllamaSpec) and spec.gguf is not None:
        yield "gguf", spec.gguf
    if isinstance(spec, LlamaCppSpec | OllamaSpec):
        yield from _indexed("lora", spec.lora)


def _servers(spec: LlamaCppSpec | OllamaSpec | VllmSpec) -> Iterator[tuple[str, str]]:
    if isinstance(spec, LlamaCppSpec | VllmSpec):
        yield from _indexed("urls", spec.urls)
    if isinstance(spec, OllamaSpec) and spec.url is not None:
        yield "url", spec.url


def _indexed(field: str, values: Iterable[str]) -> Iterator[tuple[str, str]]:
    for index, value in enumerate(values):
        yield f"{field}[{index}]", value
