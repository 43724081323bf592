"""A contract fake of Ollama's server, for tests only.

It follows Ollama's API reference, docs/api.md (https://github.com/ollama/ollama/blob/main/docs/
api.md), for model management, and docs/api/openai-compatibility.mdx for inference:

* ``HEAD /api/blobs/:digest``: 200 if the blob exists, 404 if not.
* ``POST /api/blobs/:digest``: the file as the body; 201 Created, 400 if the digest does not
  match it.
* ``POST /api/create`` ``{"model", "from", "files": {name: digest}, "adapters": {name: digest},
  "template", "system", "parameters", "stream"}``: a stream of ``{"status": ...}`` objects ending
  in ``{"status": "success"}``, or that one object with ``"stream": false``; errors as
  ``{"error": "..."}``. ``from`` names an existing model to create the new one from (its
  template, system prompt and parameters are kept unless given); one Ollama does not have is
  pulled from ollama.com, which fails for names no registry holds: 500, ``pull model manifest:
  file does not exist`` (as ``waitForStream`` answers an error without a status). ``adapters``
  are LoRA adapter blobs applied on the model (a Modelfile's ``ADAPTER``); like ``files``, each
  must have been pushed.
* ``GET /api/tags``: ``{"models": [{"name", "model", "modified_at", "size", "digest",
  "details"}]}``; ``GET /api/ps``: the models loaded (here: those that answered a request).
* ``DELETE /api/delete`` ``{"model"}``: 200, or 404 if there is no such model.
* ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` in OpenAI's format, with the
  request fields the compatibility document lists (no ``n``, no ``logprobs``). A model created
  with ``adapters`` answers (not streamed) with its name first, ``[NAME] Forgeline serves...``,
  so a test can tell which model a request reached.

Model names are ``[namespace/]model[:tag]``; a name without a tag means ``:latest``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import openai_text

_NAME = re.compile(r"^(?:[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*(?::[a-z0-9._-]+)?$")


def _full(name: str) -> str:
    name = name.lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _openai_error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


class FakeOllama:
    """State and routes of one fake Ollama server."""

    def __init__(self) -> None:
        self.blobs: dict[str, int] = {}  # digest -> size
        self.models: dict[str, dict[str, Any]] = {}
        self.loaded: set[str] = set()
        self.blob_uploads = 0
        self.requests: list[dict[str, Any]] = []
        #: The bodies of ``POST /api/create``, in order.
        self.creates: list[dict[str, Any]] = []
        #: Seconds between the chunks of a streamed answer (a test's stream can stay open).
        self.chunk_delay = 0.0
        self.app = Starlette(
            routes=[
                Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
                Route("/api/create", self.create, methods=["POST"]),
                Route("/api/tags", self.tags, methods=["GET"]),
                Route("/api/ps", self.ps, methods=["GET"]),
                Route("/api/delete", self.delete, methods=["DELETE"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embed, methods=["POST"]),
            ]
        )

    async def blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if request.method == "HEAD":
            return Response(status_code=200 if digest in self.blobs else 404)
        hasher = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            hasher.update(chunk)
            size += len(chunk)
        if f"sha256:{hasher.hexdigest()}" != digest:
            return _error(400, "digest mismatch")
        self.blobs[digest] = size
        self.blob_uploads += 1
        return Response(status_code=201)

    async def create(self, request: Request) -> Response:
        body = await request.json()
        self.creates.append(body)
        name = str(body.get("model", ""))
        if not _NAME.match(name.lower()):
            return _error(400, "invalid model name")
        files: dict[str, str] = body.get("files") or {}
        adapters: dict[str, str] = body.get("adapters") or {}
        source = body.get("from")
        if not files and not source:
            return _error(400, "neither 'from' or 'files' was specified")
        parent: dict[str, Any] = {}
        if source:
            if _full(str(source)) not in self.models:
                # Ollama pulls an unknown `from` model from its registry, which has none of this.
                return _error(500, "pull model manifest: file does not exist")
            parent = self.models[_full(str(source))]
        missing = [d for d in [*files.values(), *adapters.values()] if d not in self.blobs]
        if missing:
            return _error(400, f"file {missing[0]} not found")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        layers = [*parent.get("layers", []), *files.values(), *adapters.values()]
        self.models[_full(name)] = {
            "name": _full(name),
            "model": _full(name),
            "modified_at": datetime.now(UTC).isoformat(),
            "size": sum(self.blobs.get(d, 0) for d in layers),
            "digest": digest,
            "details": {
                "parent_model": _full(str(source)) if source else "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "2M",
                "quantization_level": "F16",
            },
            "template": body.get("template", parent.get("template")),
            "system": body.get("system", parent.get("system")),
            "parameters": body.get("parameters", parent.get("parameters")),
            "layers": layers,
            "adapters": [*parent.get("adapters", []), *adapters.values()],
        }
        steps = [
            {"status": "parsing GGUF"},
            *(
                {"status": f"using existing layer {d}"}
                for d in [*files.values(), *adapters.values()]
            ),
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if body.get("stream") is False:
            return JSONResponse(steps[-1])

        async def lines() -> AsyncIterator[bytes]:
            for step in steps:
                yield json.dumps(step).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def _listed(self, names: set[str] | None = None) -> list[dict[str, Any]]:
        keys = ("name", "model", "modified_at", "size", "digest", "details")
        return [
            {k: m[k] for k in keys} for n, m in self.models.items() if names is None or n in names
        ]

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": self._listed()})

    async def ps(self, request: Request) -> Response:
        return JSONResponse({"models": self._listed(self.loaded)})

    async def delete(self, request: Request) -> Response:
        name = _full(str((await request.json()).get("model", "")))
        if name not in self.models:
            return _error(404, f"model '{name}' not found")
        del self.models[name]
        self.loaded.discard(name)
        return Response(status_code=200)

    async def _inference(self, request: Request, chat: bool) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        name = _full(str(body.get("model", "")))
        if name not in self.models:
            return _openai_error(
                404, f'model "{body.get("model")}" not found, try pulling it first'
            )
        self.loaded.add(name)
        if body.get("stream"):
            return StreamingResponse(
                openai_text.stream(body, chat, self.chunk_delay, n_supported=False),
                media_type="text/event-stream",
            )
        answer = openai_text.answer(body, chat, n_supported=False)
        if self.models[name]["adapters"]:
            for choice in answer["choices"]:
                if chat:
                    message = choice["message"]
                    message["content"] = f"[{name}] {message['content']}"
                else:
                    choice["text"] = f"[{name}] {choice['text']}"
        return JSONResponse(answer)

    async def chat(self, request: Request) -> Response:
        return await self._inference(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._inference(request, chat=False)

    async def embed(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        name = _full(str(body.get("model", "")))
        if name not in self.models:
            return _openai_error(
                404, f'model "{body.get("model")}" not found, try pulling it first'
            )
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 0.25]}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
