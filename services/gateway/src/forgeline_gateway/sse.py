"""Relaying a backend's server-sent events to the client, as OpenAI sends them.

Bytes pass through untouched, event by event, except where OpenAI's format needs a hand:

* the gateway always asks the backend for usage (it counts tokens), so usage reports are taken
  out of the stream, and put back as the one last chunk OpenAI sends (``choices: []``, before
  ``data: [DONE]``) only when the client asked with ``stream_options.include_usage``. Backends
  differ here (llama-server reports usage once per choice, and on the last text chunk of a
  completion); the client sees OpenAI's shape either way.
* where a backend knows the model by another name (Ollama), ``model`` is rewritten.

Events are forwarded as soon as they are complete; nothing waits for the end of the response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DONE_EVENT", "StreamRelay", "error_event"]

DONE_EVENT = b"data: [DONE]\n\n"
_USAGE_MARKS = (b'"usage":{', b'"usage": {')
# Fields a backend adds that OpenAI's chunks do not have (llama-server's timing report).
_BACKEND_ONLY = ("timings", "__verbose")


def error_event(message: str, error_type: str, code: str) -> bytes:
    """An error in the middle of a stream, the way OpenAI reports one (the SDK raises it)."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class StreamRelay:
    """Turns a backend's event stream into the client's.

    Args:
        include_usage: the client asked for the final usage chunk.
        n: choices per prompt the client asked for (to count a shared prompt once).
        model: the public model name to write into every event, or None to leave the
            backend's (when it already is the public name).
    """

    include_usage: bool
    n: int = 1
    model: str | None = None
    prompt_reports: list[int] = field(default_factory=list)
    completion_reports: list[int] = field(default_factory=list)
    done: bool = False
    _pending: bytes = b""
    _template: dict[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        total = sum(self.prompt_reports)
        # A backend that reports once per choice repeats the prompt n times.
        if self.n > 1 and len(self.prompt_reports) % self.n == 0:
            return total // self.n
        return total

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion_reports)

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the backend; return what can be sent to the client now."""
        self._pending += data
        end = self._pending.rfind(b"\n\n")
        if end < 0:
            return b""
        ready, self._pending = self._pending[: end + 2], self._pending[end + 2 :]
        if (
            self.model is None
            and not any(mark in ready for mark in _USAGE_MARKS)
            and (not self.include_usage or b"[DONE]" not in ready)
        ):
            if b"[DONE]" in ready:
                self.done = True
            return ready
        return b"".join(self._event(event) for event in ready.split(b"\n\n") if event.strip())

    def finish(self) -> bytes:
        """The backend's stream ended: what is still owed to the client."""
        tail = self._pending
        self._pending = b""
        out = self._event(tail.strip()) if tail.strip() else b""
        if not self.done:
            out += self._done()
        return out

    def fail(self, message: str, error_type: str, code: str) -> bytes:
        """The backend's stream broke off: the error event that ends the client's."""
        return error_event(message, error_type, code)

    def _event(self, event: bytes) -> bytes:
        if self.model is None and b"[DONE]" not in event and b'"usage"' not in event:
            return event + b"\n\n"  # the common case, kept cheap
        lines = event.split(b"\n")
        data_lines = [line[5:].lstrip() for line in lines if line.startswith(b"data:")]
        if not data_lines:
            return event + b"\n\n"  # a comment (": ping") or a field the client may use
        payload = b"\n".join(data_lines)
        if payload.strip() == b"[DONE]":
            return self._done()
        needs_parse = self.model is not None or any(mark in payload for mark in _USAGE_MARKS)
        if not needs_parse:
            return event + b"\n\n"
        try:
            chunk = json.loads(payload)
        except ValueError:
            return event + b"\n\n"
        if not isinstance(chunk, dict):
            return event + b"\n\n"
        if self.model is not None and "model" in chunk:
            chunk["model"] = self.model
        for extra in _BACKEND_ONLY:
            chunk.pop(extra, None)
        usage = chunk.pop("usage", None)
        if isinstance(usage, dict):
            self.prompt_reports.append(_int(usage.get("prompt_tokens")))
            self.completion_reports.append(_int(usage.get("completion_tokens")))
            self._template = {
                k: chunk[k]
                for k in ("id", "object", "created", "model", "system_fingerprint")
                if k in chunk
            }
            if not chunk.get("choices"):
                return b""
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def _done(self) -> bytes:
        self.done = True
        out = b""
        if self.include_usage and self._template is not None:
            prompt, completion = self.prompt_tokens, self.completion_tokens
            chunk = {
                **self._template,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            out = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        return out + DONE_EVENT


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
