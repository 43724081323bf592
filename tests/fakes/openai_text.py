"""Deterministic OpenAI-format answers for the fakes: the words of a fixed sentence, one per
token, so tests know exactly what a request should produce.

The shapes are OpenAI's API reference (https://platform.openai.com/docs/api-reference/chat and
/completions), which vLLM and Ollama both implement for their ``/v1`` endpoints.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

WORDS = ("Forgeline", " serves", " this", " answer", " one", " word", " at", " a", " time", ".")
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS = 64  # a fake: longer answers would only slow tests down


def words_for(body: dict[str, Any]) -> tuple[list[str], str]:
    """The tokens of the answer and its finish reason, honouring max_tokens and stop."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    tokens = [WORDS[i % len(WORDS)] for i in range(min(int(limit), MAX_TOKENS))]
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    text = ""
    for index, token in enumerate(tokens):
        candidate = text + token
        hit = next((s for s in stops if s in candidate), None)
        if hit is not None:
            return [*tokens[:index], candidate[len(text) : candidate.index(hit)]], "stop"
        text = candidate
    return tokens, "length"


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"])
    return max(1, len(str(body.get("prompt", "")).split()))


def answer(body: dict[str, Any], chat: bool, n_supported: bool = True) -> dict[str, Any]:
    """The non-streamed answer to `body`."""
    tokens, finish = words_for(body)
    n = int(body.get("n") or 1) if n_supported else 1
    text = "".join(tokens)
    if chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
            for i in range(n)
        ]
    else:
        choices = [
            {"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i in range(n)
        ]
    prompt = prompt_tokens(body)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens) * n,
            "total_tokens": prompt + len(tokens) * n,
        },
    }


async def stream(
    body: dict[str, Any], chat: bool, delay: float = 0.0, n_supported: bool = True
) -> AsyncIterator[bytes]:
    """The streamed answer to `body`, as OpenAI's server-sent events."""
    tokens, finish = words_for(body)
    n = int(body.get("n") or 1) if n_supported else 1
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": body["model"],
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    for position, token in enumerate(tokens):
        for i in range(n):
            if chat:
                delta: dict[str, Any] = {"content": token}
                if position == 0:
                    delta["role"] = "assistant"
                choice = {"index": i, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": i, "text": token, "finish_reason": None}
            yield event([choice])
        if delay:
            await asyncio.sleep(delay)
    last: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    yield event([{**last, "index": i} for i in range(n)])
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        prompt = prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens) * n,
            "total_tokens": prompt + len(tokens) * n,
        }
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"
