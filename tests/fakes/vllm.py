"""A contract fake of vLLM's OpenAI-compatible server, for tests only.

It follows vLLM's documentation, and only what the gateway relies on:

* "OpenAI-Compatible Server" (https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html):
  ``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` in
  OpenAI's format (streaming with ``stream_options.include_usage``); errors as
  ``{"error": {"message", "type", "param", "code"}}``, a model it does not serve is a 404.
* "LoRA Adapters → Dynamically serving LoRA Adapters"
  (https://docs.vllm.ai/en/latest/features/lora/): ``POST /v1/load_lora_adapter``
  ``{"lora_name", "lora_path"}`` answers 200 with ``Success: LoRA adapter '<name>' added
  successfully``; ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` answers 200 with
  ``Success: LoRA adapter '<name>' removed successfully``; a loaded adapter is then a model
  name (listed by ``/v1/models`` with ``parent`` = the base model).

Knobs for tests: `fail_next` answers that many inference requests with a 500; `chunk_delay`
slows streams down, `first_event_delay` holds a stream's first event back (a long prompt being
read) and `answer_delay` slows non-streamed answers; `requests` records every inference
body; `cancelled` counts requests whose client went away before the answer was complete.
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, base_model: str, *, embeddings: bool = False) -> None:
        self.base_model = base_model
        self.embeddings = embeddings
        self.loras: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self.chunk_delay = 0.0
        self.first_event_delay = 0.0
        self.answer_delay = 0.0
        self.cancelled = 0
        self.created = int(time.time())
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embed, methods=["POST"]),
            ]
        )

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
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequest")
        if name in self.loras:
            return _error(
                400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
            )
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(400, f"No adapter found for {path}", "BadRequestError")
        self.loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: Request) -> Response:
        name = (await request.json()).get("lora_name")
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
