"""Ollama: models are managed through its native API, inference goes through its OpenAI API.

Model management follows Ollama's API reference (docs/api.md, https://github.com/ollama/ollama/
blob/main/docs/api.md): ``HEAD``/``POST /api/blobs/:digest`` to push the GGUF once (by its
sha256), ``POST /api/create`` with ``files`` naming that blob, ``GET /api/tags`` to confirm,
``DELETE /api/delete`` to remove, ``GET /api/ps`` for what is loaded.

Inference uses Ollama's OpenAI-compatible ``/v1`` endpoints (docs/api/openai-compatibility.mdx)
rather than the native ``/api/chat``: its server-sent events are OpenAI's already, so the
gateway's streaming path passes them through as for every other backend, where the native
NDJSON stream would need translating chunk by chunk; and the compatibility document lists which
request fields Ollama honours, which is what the capabilities below declare. The native API's
only gains (``options`` such as ``num_ctx``) belong in the deployment's ``parameters``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from forgeline_gateway.backends.base import (
    Backend,
    Capabilities,
    Endpoint,
    Placement,
    is_readable_file,
)
from forgeline_gateway.deployments.spec import OllamaSpec
from forgeline_kit.errors import FailedPrecondition, InvalidArgument

__all__ = ["OllamaBackend", "ollama_model_name"]

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 600.0  # pushing and creating a multi-GB GGUF
CHUNK_BYTES = 1 << 20

# Supported request fields, per Ollama's OpenAI compatibility document.
_CHAT = frozenset(
    {
        "messages",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "seed",
        "stop",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",  # sent as max_tokens, which Ollama reads
        "tools",
        "reasoning_effort",
    }
)
_COMPLETIONS = frozenset(
    {
        "prompt",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "stop",
        "temperature",
        "top_p",
        "max_tokens",
        "suffix",
    }
)
_EMBEDDINGS = frozenset({"input", "encoding_format", "dimensions"})


def ollama_model_name(name: str) -> str:
    """Ollama's name for the public model `name`.

    Ollama names are ``[namespace/]model[:tag]`` of letters, digits, ``_``, ``-`` and ``.``;
    public names may hold ``:`` (``ft:tiny:acme:demo:abc123``). A hash of the public name keeps
    two names that reduce to the same text apart.
    """
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:60] or "model"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"forgeline/{slug}-{digest}:latest"


class OllamaBackend(Backend[OllamaSpec]):
    """Pushes GGUF files into Ollama servers and serves them through Ollama's OpenAI API."""

    kind = "ollama"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        # Slow answers are normal here (loading weights); an unreachable server is not.
        self._timeout = httpx.Timeout(ADMIN_TIMEOUT_S, connect=client.timeout.connect)

    def capabilities(self, spec: OllamaSpec) -> Capabilities:
        if spec.embeddings:
            return Capabilities({Endpoint.EMBEDDINGS: _EMBEDDINGS})
        return Capabilities({Endpoint.CHAT: _CHAT, Endpoint.COMPLETIONS: _COMPLETIONS})

    def check(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> None:
        if endpoint is Endpoint.COMPLETIONS and not isinstance(params.get("prompt"), str):
            raise InvalidArgument(
                f"The model '{model}' (served by ollama) takes one prompt as a string.",
                field="prompt",
            )
        text_input = params.get("input")
        if endpoint is Endpoint.EMBEDDINGS and not (
            isinstance(text_input, str)
            or (isinstance(text_input, list) and all(isinstance(i, str) for i in text_input))
        ):
            raise InvalidArgument(
                f"The model '{model}' (served by ollama) embeds text, not token ids.",
                field="input",
            )

    def prepare(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> dict[str, Any]:
        if "max_completion_tokens" in params:
            params = dict(params)
            params.setdefault("max_tokens", params.pop("max_completion_tokens"))
            params.pop("max_completion_tokens", None)
        return params

    async def place(self, name: str, spec: OllamaSpec) -> Placement:
        assert spec.url is not None  # the manager fills in the gateway's default
        assert spec.gguf is not None  # the manager fetches registry_gguf into the cache first
        url = spec.url.rstrip("/")
        path = Path(spec.gguf)
        if not await asyncio.to_thread(is_readable_file, path):
            raise FailedPrecondition(
                f"the GGUF file {path} does not exist on the gateway host", field="gguf"
            )
        digest = "sha256:" + await asyncio.to_thread(_sha256, path)
        upstream = ollama_model_name(name)
        await self._push_blob(url, path, digest)
        request: dict[str, Any] = {"model": upstream, "files": {path.name: digest}, "stream": False}
        if spec.template is not None:
            request["template"] = spec.template
        if spec.system is not None:
            request["system"] = spec.system
        if spec.parameters:
            request["parameters"] = spec.parameters
        response = await self._call("POST", f"{url}/api/create", json=request)
        if not response.is_success or response.json().get("status") != "success":
            raise FailedPrecondition(
                f"Ollama at {url} could not create the model: {_message(response)}"
            )
        if upstream not in await self._tags(url):
            raise FailedPrecondition(f"Ollama at {url} did not list '{upstream}' after creating it")
        log.info("model created in Ollama", extra={"model": name, "ollama_model": upstream})
        return Placement(urls=[url], upstream_model=upstream)

    async def release(self, name: str, spec: OllamaSpec, placement: Placement) -> None:
        for url in placement.urls:
            try:
                response = await self._call(
                    "DELETE", f"{url}/api/delete", json={"model": placement.upstream_model}
                )
            except FailedPrecondition as error:
                log.warning("Ollama could not be reached to delete a model", exc_info=error)
                continue
            if not response.is_success and response.status_code != 404:
                log.warning(
                    "Ollama refused to delete a model",
                    extra={"model": name, "error": _message(response)},
                )

    async def running(self, url: str) -> list[str]:
        """The models Ollama at `url` has loaded now (``GET /api/ps``)."""
        response = await self._call("GET", f"{url.rstrip('/')}/api/ps")
        return [str(m.get("name")) for m in response.json().get("models", [])]

    async def _push_blob(self, url: str, path: Path, digest: str) -> None:
        head = await self._call("HEAD", f"{url}/api/blobs/{digest}")
        if head.status_code == 200:
            return  # Ollama has these bytes already (blobs are content-addressed)
        response = await self._call("POST", f"{url}/api/blobs/{digest}", content=_read_chunks(path))
        if response.status_code not in (200, 201):
            raise FailedPrecondition(
                f"Ollama at {url} refused the GGUF blob {digest}: {_message(response)}"
            )

    async def _tags(self, url: str) -> set[str]:
        response = await self._call("GET", f"{url}/api/tags")
        return {str(m.get("name")) for m in response.json().get("models", [])}

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, url, timeout=self._timeout, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise FailedPrecondition(
                f"Ollama at {url} could not be reached: {error!r}", field="url"
            ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    # Bounded memory whatever the file size: one chunk at a time, read off the event loop.
    with path.open("rb") as stream:
        while block := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            yield block


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or f"status {response.status_code}"
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        return str(error.get("message", error) if isinstance(error, dict) else error)
    return str(body)[:500]
