"""A contract fake of vLLM's OpenAI-compatible server, for tests only.

It follows vLLM's documentation, and only what the gateway relies on:

* "OpenAI-Compatible Server" (https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html):
  ``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` in
  OpenAI's format (streaming with ``stream_options.include_usage``); errors as
  ``{"error": {"message", "type", "param", "code"}}``, a model it does not serve is a 404.
* "LoRA Adapters" (https://docs.vllm.ai/en/latest/features/lora/): a server started with
  ``--enable-lora`` (``--max-loras``, ``--max-lora-rank``, vLLM's default rank 16) takes PEFT
  adapter directories; under "Dynamically serving LoRA Adapters", the two endpoints exist only
  when ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is set (else they are 404s, as any unknown route):
  ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` answers 200 with ``Success:
  LoRA adapter '<name>' added successfully.``; ``POST /v1/unload_lora_adapter``
  ``{"lora_name"}`` answers 200 with ``Success: LoRA adapter '<name>' removed
  successfully.``; a loaded adapter is then a model name requests give as ``model`` (listed by
  ``/v1/models`` with ``root`` = its path and ``parent`` = the base model).
  Their refusals, as vLLM's ``OpenAIServingModels`` (``load_lora_adapter``,
  ``unload_lora_adapter``) answers them: a missing name or path is a 400 ``InvalidUserInput``
  ("Both 'lora_name' and 'lora_path' must be provided."); loading a name already loaded, a 400
  ``InvalidUserInput`` ("The lora adapter '<name>' has already been loaded."); a path with no
  adapter, a 404 ``NotFoundError`` (the engine's "... No adapter found for <path>"); any other
  failure to add it (a server started without ``--enable-lora`` among them), a 400
  ``BadRequestError`` with the engine's message (a rank above
  ``--max-lora-rank``: "LoRA rank R is greater than max_lora_rank M."); unloading a name not
  loaded, a 404 ``NotFoundError`` ("The lora adapter '<name>' cannot be found."). vLLM takes
  more adapters than ``--max-loras`` (swapping them through its GPU slots): so does the fake.
  A request naming an adapter that is not loaded (never, or since unloaded) is the 404 of any
  model the server does not serve (``OpenAIServing._check_model``: "The model `<name>` does
  not exist.").

Knobs for tests: `fail_next` answers that many inference requests with a 500; `chunk_delay`
slows streams down, `first_event_delay` holds a stream's first event back (a long prompt being
read) and `answer_delay` slows non-streamed answers; `requests` records every inference
body; `cancelled` counts requests whose client went away before the answer was complete;
`lora_calls` records every load/unload body, in order; `most_loaded` is the most adapters it
held at once; `load_delay` slows loads down (an adapter read from disk onto the GPU).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import openai_text


def _error(status: int, message: str, error_type: str) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


class FakeVllm:
    """State and routes of one fake vLLM server."""

    def __init__(
        self,
        base_model: str,
        *,
        embeddings: bool = False,
        enable_lora: bool = True,
        runtime_lora_updating: bool = True,
        max_lora_rank: int = 16,
    ) -> None:
        self.base_model = base_model
        self.embeddings = embeddings
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.loras: dict[str, str] = {}
        self.lora_calls: list[tuple[str, dict[str, Any]]] = []
        self.most_loaded = 0
        self.load_delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self.chunk_delay = 0.0
        self.first_event_delay = 0.0
        self.answer_delay = 0.0
        self.cancelled = 0
        self.created = int(time.time())
        #: Container mounts (target → source on this machine) paths are resolved through.
        self.mounts: dict[str, str] = {}
        routes = [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embed, methods=["POST"]),
        ]
        if runtime_lora_updating:
            routes += [
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
            ]
        self.app = Starlette(routes=routes)

    async def models(self, request: Request) -> Response:
        data = [
            {
                "id": self.base_model,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.base_model,
                "parent": None,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.base_model,
            }
            for name, path in self.loras.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def load(self, request: Request) -> Response:
        body = await request.json()
        self.lora_calls.append(("load", body))
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if name in self.loras:
            return _error(
                400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
            )
        # The engine adds the adapter (reading it from disk): its failures come back as errors.
        if not self.enable_lora:
            return _error(
                400, "LoRA is not enabled. Use --enable-lora to enable LoRA.", "BadRequestError"
            )
        config = Path(self._visible(path)) / "adapter_config.json"
        if not config.is_file():
            message = f"Loading lora {name} failed: No adapter found for {path}"
            return _error(404, message, "NotFoundError")
        rank = int(json.loads(config.read_text()).get("r", 0))
        if rank > self.max_lora_rank:
            message = f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}."
            return _error(400, message, "BadRequestError")
        await asyncio.sleep(self.load_delay)
        self.loras[name] = path
        self.most_loaded = max(self.most_loaded, len(self.loras))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def _visible(self, path: str) -> str:
        """`path` as this server's file system has it: a container's mounts (`mounts`, target
        → source) map into the test's directories."""
        for target, source in self.mounts.items():
            if path == target or path.startswith(f"{target}/"):
                return source + path[len(target) :]
        return path

    async def unload(self, request: Request) -> Response:
        body = await request.json()
        self.lora_calls.append(("unload", body))
        name = body.get("lora_name")
        if not name:
            message = "either 'lora_name' and 'lora_int_id' needs to be provided."
            return _error(400, message, "InvalidUserInput")
        if name not in self.loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loras[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def _inference(self, request: Request, chat: bool) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        if self.fail_next > 0:
            self.fail_next -= 1
            return _error(500, "EngineCore encountered an issue.", "InternalServerError")
        model = body.get("model")
        if model != self.base_model and model not in self.loras:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if body.get("stream"):
            return StreamingResponse(
                self._watched(
                    openai_text.stream(body, chat, self.chunk_delay), self.first_event_delay
                ),
                media_type="text/event-stream",
            )
        if await self._client_left_within(request, self.answer_delay):
            self.cancelled += 1
            return Response(status_code=499)
        return JSONResponse(openai_text.answer(body, chat))

    @staticmethod
    async def _client_left_within(request: Request, seconds: float) -> bool:
        """Wait `seconds` as a slow engine would, noticing a client that leaves meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return True
            await asyncio.sleep(0.02)
        return False

    async def _watched(
        self, events: AsyncIterator[bytes], first_event_delay: float = 0.0
    ) -> AsyncIterator[bytes]:
        try:
            await asyncio.sleep(first_event_delay)
            async for event in events:
                yield event
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def chat(self, request: Request) -> Response:
        return await self._inference(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._inference(request, chat=False)

    async def embed(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        if not self.embeddings:
            return _error(400, "The model does not support Embeddings API", "BadRequestError")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(text))), 1.0, 0.5]}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(str(text).split()) for text in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
