"""A streamed chat completion (``chat.completion.chunk`` events) as the Responses API's
events, ``response.created`` … ``response.completed``, translated one upstream chunk at a time
(`ResponsesStream`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from forgeline_gateway.api.responses.protocol import ResponseError, ResponseObject, ResponseUsage
from forgeline_gateway.api.responses.response_parts import (
    ItemStatus,
    call_item,
    finish_status,
    message_item,
    new_id,
    response_usage,
    text_part,
)

if TYPE_CHECKING:
    # Only a type: the translation imports this module to hand its streams over.
    from forgeline_gateway.api.responses.completion_to_response import ResponsesTranslation

__all__ = ["ResponsesStream"]


@dataclass
class _Item:
    """An output item being streamed."""

    kind: Literal["message", "function_call"]
    id: str
    index: int
    status: ItemStatus = "in_progress"
    pieces: list[str] = field(default_factory=list)  # text, or arguments
    call_id: str = ""
    name: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def as_output(self) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, self.status, self.text)
        return call_item(self.id, self.status, self.call_id, self.name, self.text)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ResponsesStream:
    """Turns a backend's ``chat.completion.chunk`` events into the Responses API's events.

    Each upstream event is translated as it arrives: ``response.created`` and
    ``response.in_progress`` come with the first, a text delta is one
    ``response.output_text.delta``, a tool call's one ``response.function_call_arguments.delta``;
    an item is opened (``output_item.added``, ``content_part.added``) when its first delta comes
    and closed (``…done``) when another item starts or the choice finishes. ``[DONE]`` (or the
    end of the stream) ends with ``response.completed``, or ``response.incomplete`` when the
    answer was cut off by ``max_output_tokens``, carrying the usage. A backend failure ends it
    with ``error`` and ``response.failed``.
    """

    def __init__(self, translation: ResponsesTranslation) -> None:
        self._translation = translation
        self._sequence = 0
        self._pending = b""
        self._started = False
        self._ended = False
        self._items: list[_Item] = []
        self._current: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._finish_reason: str | None = None
        self._usage: ResponseUsage | None = None

    @property
    def prompt_tokens(self) -> int:
        return self._usage.input_tokens if self._usage else 0

    @property
    def completion_tokens(self) -> int:
        return self._usage.output_tokens if self._usage else 0

    def feed(self, data: bytes) -> bytes:
        if self._ended:
            return b""
        self._pending += data
        end = self._pending.rfind(b"\n\n")
        if end < 0:
            return b""
        ready, self._pending = self._pending[: end + 2], self._pending[end + 2 :]
        return b"".join(self._upstream(event) for event in ready.split(b"\n\n") if event.strip())

    def finish(self) -> bytes:
        tail, self._pending = self._pending, b""
        out = self._upstream(tail) if tail.strip() and not self._ended else b""
        if not self._ended:
            out += self._begin() + self._complete()
        return out

    def fail(self, message: str, error_type: str, code: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        out = self._begin()
        out += self._event("error", {"code": code, "message": message, "param": None})
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"
        response = self._translation.response(
            "failed",
            [item.as_output() for item in self._items],
            self._usage,
            error=ResponseError(code="server_error", message=message),
        )
        return out + self._response_event("response.failed", response)

    # --- one upstream event ---------------------------------------------------------------

    def _upstream(self, event: bytes) -> bytes:
        if self._ended:
            return b""  # after an error event: nothing more
        lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return b""  # a comment (": ping")
        payload = b"\n".join(lines).strip()
        out = self._begin()
        if payload == b"[DONE]":
            return out + self._complete()
        try:
            chunk = json.loads(payload)
        except ValueError:
            return out
        if not isinstance(chunk, dict):
            return out
        error = chunk.get("error")
        if error is not None:
            return out + self._upstream_error(error)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = _usage_of(usage)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def _upstream_error(self, error: object) -> bytes:
        message, code = "The backend failed while answering.", "server_error"
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = error["code"] if isinstance(error.get("code"), str) else code
        elif isinstance(error, str):
            message = error
        return self.fail(message, "server_error", code)

    def _choice(self, choice: dict[str, Any]) -> bytes:
        out = b""
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._text(content)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self._tool_call(call)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self._finish_reason = reason
            out += self._close()
        return out

    def _text(self, content: str) -> bytes:
        out = b""
        item = self._current
        if item is None or item.kind != "message":
            out += self._close()
            item = self._open_message()
            out += self._added(item)
        item.pieces.append(content)
        return out + self._event(
            "response.output_text.delta",
            {
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "delta": content,
                "logprobs": [],
            },
        )

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = _int(call.get("index"))
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        item = self._calls.get(index)
        if item is None:
            out += self._close()
            call_id = call.get("id")
            item = _Item(
                "function_call",
                new_id("fc"),
                len(self._items),
                call_id=call_id if isinstance(call_id, str) and call_id else new_id("call"),
                name=name if isinstance(name, str) else "",
            )
            self._items.append(item)
            self._calls[index] = item
            self._current = item
            out += self._added(item)
        elif isinstance(name, str) and name and not item.name:
            item.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.pieces.append(arguments)
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item.id, "output_index": item.index, "delta": arguments},
            )
        return out

    # --- items --------------------------------------------------------------------------------

    def _open_message(self) -> _Item:
        item = _Item("message", new_id("msg"), len(self._items))
        self._items.append(item)
        self._current = item
        return item

    def _added(self, item: _Item) -> bytes:
        out = self._event(
            "response.output_item.added", {"output_index": item.index, "item": _opened(item)}
        )
        if item.kind == "message":
            out += self._event(
                "response.content_part.added",
                {
                    "item_id": item.id,
                    "output_index": item.index,
                    "content_index": 0,
                    "part": text_part(""),
                },
            )
        return out

    def _close(self) -> bytes:
        """Close the item being streamed, if any."""
        item = self._current
        if item is None:
            return b""
        self._current = None
        item.status = "incomplete" if finish_status(self._finish_reason)[1] else "completed"
        at = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            text = item.text
            out = self._event(
                "response.output_text.done",
                {**at, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done", {**at, "content_index": 0, "part": text_part(text)}
            )
        else:
            out = self._event(
                "response.function_call_arguments.done", {**at, "arguments": item.text}
            )
        return out + self._event(
            "response.output_item.done", {"output_index": item.index, "item": item.as_output()}
        )

    # --- the response -------------------------------------------------------------------------

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = self._translation.response("in_progress", [])
        return self._response_event("response.created", response) + self._response_event(
            "response.in_progress", response
        )

    def _complete(self) -> bytes:
        self._ended = True
        out = self._close()
        if not self._items:  # nothing at all came: the answer is one empty message
            out += self._added(self._open_message()) + self._close()
        status, incomplete = finish_status(self._finish_reason)
        response = self._translation.response(
            status, [item.as_output() for item in self._items], self._usage, incomplete=incomplete
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._response_event(kind, response)

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        return b"event: " + kind.encode() + b"\ndata: " + data.encode() + b"\n\n"

    def _response_event(self, kind: str, response: ResponseObject) -> bytes:
        head = json.dumps({"type": kind, "sequence_number": self._sequence}, separators=(",", ":"))
        self._sequence += 1
        data = head[:-1].encode() + b',"response":' + response.model_dump_json().encode() + b"}"
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _opened(item: _Item) -> dict[str, Any]:
    """An item as ``output_item.added`` shows it: in progress, nothing in it yet."""
    if item.kind == "message":
        return message_item(item.id, "in_progress", None)
    return call_item(item.id, "in_progress", item.call_id, item.name, "")


def _usage_of(usage: dict[str, Any]) -> ResponseUsage:
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return response_usage(
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        _int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0,
    )
