"""Ollama: models are managed through its native API, inference goes through its OpenAI API.

Model management follows Ollama's API reference (docs/api.md, https://github.com/ollama/ollama/
blob/main/docs/api.md) through its official Python client (``ollama.AsyncClient``, one per
Ollama server): a GGUF is pushed once as a blob named by its sha256 (``POST /api/blobs/:digest``,
`create_blob`), then ``POST /api/create`` (`create`) makes a model of it; ``GET /api/tags``
(`list`) confirms it, ``DELETE /api/delete`` (`delete`) removes it, ``GET /api/ps`` (`ps`) tells
what is loaded. An adapter deployment on an Ollama base deployment (`OllamaSpec.base`) is one
more Ollama model: its GGUF adapters pushed as blobs, created with ``from`` (the base's Ollama
model) and ``adapters`` (file name to blob digest), Ollama's ``ADAPTER`` on the base's blob,
which is stored once whatever the number of fine-tunes on it.

The client has no call for ``HEAD /api/blobs/:digest`` (docs/api.md, "Check if a Blob Exists"),
and its `create_blob` always uploads the whole file; so the gateway hashes the file, asks with
that one request of its own whether Ollama has the blob already (content-addressed: a GGUF
deployed twice, or pushed again at a gateway restart, is sent once), and only then calls
`create_blob`. Memory stays bounded whatever the GGUF's size: the gateway hashes in 1 MiB
blocks, and `create_blob` (ollama 0.6) reads the file in 32 KiB chunks, to hash it and then to
stream it as the request body, never holding it whole; a new blob is therefore read three
times, which costs little next to sending it.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama

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
    """Pushes GGUF files (models and LoRA adapters) into Ollama servers and serves them through
    Ollama's OpenAI API."""

    kind = "ollama"

    def __init__(self, client: httpx.AsyncClient) -> None:
        """
        Args:
            client: the gateway's HTTP client, for the one call the Ollama client lacks
                (``HEAD /api/blobs/:digest``); its connect timeout is kept for Ollama's.
        """
        self.client = client
        # Slow answers are normal here (loading weights); an unreachable server is not.
        self._timeout = httpx.Timeout(ADMIN_TIMEOUT_S, connect=client.timeout.connect)
        self._servers: dict[str, ollama.AsyncClient] = {}

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
        digest = await self._push_blob(url, path, "gguf")
        upstream = ollama_model_name(name)
        await self._create(url, upstream, spec, files={path.name: digest})
        log.info("model created in Ollama", extra={"model": name, "ollama_model": upstream})
        slots = {url: spec.parallel} if spec.parallel else {}
        return Placement(urls=[url], upstream_model=upstream, slots=slots)

    async def attach_adapter(self, name: str, spec: OllamaSpec, base: Placement) -> Placement:
        """Create the adapter deployment `spec` (localized: its adapters in `lora`) as an Ollama
        model of its own on the server of its base's placement `base`: ``from`` the base's
        model, with ``adapters`` the pushed GGUF adapters. The base's model and its other
        adapters' are untouched, so their requests go on.

        Raises:
            FailedPrecondition: a file is missing, or Ollama refused or could not be reached
                (the message says why).
        """
        [url] = base.urls  # an Ollama deployment is one server
        adapters: dict[str, str] = {}
        for index, (file_name, path) in enumerate(_file_names(spec.lora)):
            adapters[file_name] = await self._push_blob(url, path, f"lora[{index}]")
        upstream = ollama_model_name(name)
        await self._create(url, upstream, spec, from_=base.upstream_model, adapters=adapters)
        log.info(
            "adapter model created in Ollama",
            extra={"model": name, "ollama_model": upstream, "base": base.upstream_model},
        )
        return Placement(urls=[url], upstream_model=upstream)

    async def release(self, name: str, spec: OllamaSpec, placement: Placement) -> None:
        # Only this deployment's model: blobs stay, shared by the models made of them (Ollama
        # removes a blob no model uses when the last one goes).
        for url in placement.urls:
            try:
                with _answering(url, f"delete the model '{placement.upstream_model}'"):
                    try:
                        await self._server(url).delete(placement.upstream_model)
                    except ollama.ResponseError as error:
                        if error.status_code != 404:
                            raise
                        # Already gone: what release is asked to make true.
            except FailedPrecondition as error:
                log.warning(
                    "Ollama did not delete a model", extra={"model": name, "error": error.message}
                )

    async def running(self, url: str) -> list[str]:
        """The models Ollama at `url` has loaded now (``GET /api/ps``)."""
        url = url.rstrip("/")
        with _answering(url, "list its loaded models"):
            loaded = await self._server(url).ps()
        return [m.model for m in loaded.models if m.model]

    async def models(self, url: str) -> set[str]:
        """The models Ollama at `url` has (``GET /api/tags``)."""
        url = url.rstrip("/")
        with _answering(url, "list its models"):
            listed = await self._server(url).list()
        return {m.model for m in listed.models if m.model}

    async def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        # The client's `close` has no annotations (ollama 0.6); it closes its httpx client.
        await asyncio.gather(*(server.close() for server in servers))  # type: ignore[no-untyped-call]

    def _server(self, url: str) -> ollama.AsyncClient:
        """The Ollama client of the server at `url` (one per server, kept for its connections)."""
        server = self._servers.get(url)
        if server is None:
            # Backends are reached directly: no HTTP(S)_PROXY, as for the gateway's own client.
            server = ollama.AsyncClient(host=url, timeout=self._timeout, trust_env=False)
            self._servers[url] = server
        return server

    async def _create(
        self,
        url: str,
        model: str,
        spec: OllamaSpec,
        *,
        files: dict[str, str] | None = None,
        from_: str | None = None,
        adapters: dict[str, str] | None = None,
    ) -> None:
        """``POST /api/create`` of `model`, then check Ollama lists it."""
        doing = f"create the model '{model}'" + (f" from '{from_}'" if from_ else "")
        # An unknown `from` is pulled from ollama.com first by Ollama, which fails for the
        # gateway's names: the base's model is gone from Ollama.
        hint = (
            f"; if '{from_}' is missing from Ollama, delete and deploy the base deployment again"
            if from_
            else ""
        )
        with _answering(url, doing, hint=hint):
            progress = await self._server(url).create(
                model=model,
                from_=from_,
                files=files,
                adapters=adapters,
                template=spec.template,
                system=spec.system,
                parameters=spec.parameters or None,
                stream=False,
            )
        if progress.status != "success":
            raise FailedPrecondition(
                f"Ollama at {url} could not {doing}: it answered '{progress.status}'"
            )
        if model not in await self.models(url):
            raise FailedPrecondition(f"Ollama at {url} did not list '{model}' after creating it")

    async def _push_blob(self, url: str, path: Path, field: str) -> str:
        """Push the file at `path` to Ollama as a blob, unless it has it already; its digest.

        Raises:
            FailedPrecondition: naming `field`, when the file is missing or changed while it
                was sent; or Ollama refused it or could not be reached.
        """
        if not await asyncio.to_thread(is_readable_file, path):
            raise FailedPrecondition(
                f"the GGUF file {path} does not exist on the gateway host", field=field
            )
        try:
            digest = "sha256:" + await asyncio.to_thread(_sha256, path)
        except OSError as error:
            raise _unreadable(path, error, field) from None
        if await self._has_blob(url, digest):
            return digest  # Ollama has these bytes already (blobs are content-addressed)
        with _answering(url, f"take the file {path} as the blob {digest}", field=field):
            try:
                pushed = await self._server(url).create_blob(path)
            except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
                # Gone or made unreadable since it was hashed.
                raise _unreadable(path, error, field) from None
        if pushed != digest:
            raise FailedPrecondition(
                f"the file {path} changed while it was sent to Ollama: deploy it again once "
                "nothing writes to it",
                field=field,
            )
        return digest

    async def _has_blob(self, url: str, digest: str) -> bool:
        """``HEAD /api/blobs/:digest`` (docs/api.md): 200 if Ollama has the blob, 404 if not."""
        with _answering(url, "say whether it has a blob"):
            response = await self.client.head(f"{url}/api/blobs/{digest}", timeout=self._timeout)
        return response.status_code == 200


@contextmanager
def _answering(url: str, doing: str, *, field: str | None = None, hint: str = "") -> Iterator[None]:
    """Turn the Ollama client's errors while asking Ollama at `url` to do `doing` into the
    kit's, with what to do about them."""
    try:
        yield
    except ollama.ResponseError as error:
        raise FailedPrecondition(
            f"Ollama at {url} refused to {doing}: {error.error} (HTTP {error.status_code})" + hint,
            field=field,
        ) from None
    # The client turns a refused connection into the builtin ConnectionError; the rest of
    # httpx's errors (timeouts, a dropped connection, a malformed URL) reach here as they are.
    except (ConnectionError, httpx.HTTPError, httpx.InvalidURL) as error:
        raise FailedPrecondition(
            f"Ollama at {url} could not be reached to {doing} ({type(error).__name__}: "
            f"{error}): check that it is running there, or give the deployment the 'url' of "
            "one (default: FORGELINE_GATEWAY_OLLAMA_URL)",
            field="url",
        ) from None


def _unreadable(path: Path, error: OSError, field: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the GGUF file {path} could not be read on the gateway host: {error.strerror}",
        field=field,
    )


def _file_names(paths: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """Each path with the name its file is given in Ollama's ``adapters``: its own, made unique
    by its position where two share one (registry versions often do)."""
    names = [Path(p).name for p in paths]
    for index, (name, path) in enumerate(zip(names, paths, strict=True)):
        yield (name if names.count(name) == 1 else f"{index}-{name}"), Path(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
