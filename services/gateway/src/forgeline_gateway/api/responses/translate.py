"""The Responses API in terms of chat completions, which every backend answers.

* `chat_request`: a Responses request becomes a chat completion request (``instructions`` a
  leading system message, input items messages, function tools chat tools, ``text.format``
  ``response_format``); what it cannot honour is a 400 naming the parameter.
* `ResponsesTranslation.answer`: a chat completion becomes a ``response`` object.
* `ResponsesStream`: ``chat.completion.chunk`` events become the Responses API's events
  (``response.created`` … ``response.completed``), one upstream chunk at a time.

The gateway keeps no responses: nothing here is stored, and what would need a stored response
(``previous_response_id``, ``conversation``, ``store: true``, ``background: true``) is refused.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, PrivateAttr

from forgeline_gateway.api.chat.protocol import ChatCompletion
from forgeline_gateway.api.common import OpenAIRequest, Usage
from forgeline_gateway.api.responses.protocol import (
    FunctionCallInput,
    IncompleteDetails,
    InputItem,
    InputMessage,
    InputRefusal,
    InputTokensDetails,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextFormatText,
    ToolChoiceFunction,
)
from forgeline_kit.errors import InvalidArgument

__all__ = [
    "ChatRequest",
    "ResponsesStream",
    "ResponsesTranslation",
    "chat_request",
    "public_param",
]

Status = Literal["completed", "failed", "in_progress", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

_STATELESS = (
    "the gateway does not store responses. Send the whole conversation in 'input' (earlier "
    "output items can be passed back as input items)."
)

# Chat Completions parameters that have a Responses counterpart, or no meaning here: sent as
# extra parameters they would bypass the translation.
_CHAT_ONLY: Mapping[str, str] = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "n": "",
    "logprobs": "",
    "echo": "",
    "best_of": "",
    "suffix": "",
    "functions": "tools",
    "function_call": "tool_choice",
}

# Chat parameter → the Responses parameter it was made from (for errors the backend or its
# capabilities raise about the chat request).
_PUBLIC_NAMES: Mapping[str, str] = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


class ChatRequest(OpenAIRequest):
    """A chat completion request made from a Responses request (checked there already)."""

    _params: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def of(cls, params: dict[str, Any]) -> ChatRequest:
        request = cls()
        request._params = params
        return request

    def upstream_params(self) -> dict[str, Any]:
        return dict(self._params)


def public_param(error: InvalidArgument) -> InvalidArgument:
    """`error` (about the chat request) naming the Responses parameter instead."""
    public = _PUBLIC_NAMES.get(error.field or "")
    if public is not None:
        error.message = error.message.replace(f"'{error.field}'", f"'{public}'")
        error.field = public
    return error


def chat_request(body: ResponsesRequest) -> ChatRequest:
    """The chat completion request answering `body`.

    Raises:
        InvalidArgument: a parameter the gateway cannot honour, named.
    """
    _refuse_unsupported(body)
    messages: list[dict[str, Any]] = []
    if body.instructions is not None:
        messages.append({"role": "system", "content": body.instructions})
    messages += _messages(body.input)
    chat: dict[str, Any] = {"model": body.model, "messages": messages}
    if body.stream:
        chat["stream"] = True
    if body.max_output_tokens is not None:
        chat["max_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        value = getattr(body, name)
        if value is not None:
            chat[name] = value
    if body.tools is not None:
        chat["tools"] = [
            {
                "type": "function",
                "function": tool.model_dump(mode="json", exclude_none=True, exclude={"type"}),
            }
            for tool in body.tools
        ]
    if isinstance(body.tool_choice, ToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": body.tool_choice.name}}
    elif body.tool_choice is not None:
        chat["tool_choice"] = body.tool_choice
    text_format = body.text.format if body.text is not None else None
    if text_format is not None and not isinstance(text_format, TextFormatText):
        if text_format.type == "json_schema":
            schema = text_format.model_dump(mode="json", by_alias=True, exclude_none=True)
            schema.pop("type")
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            chat["response_format"] = {"type": "json_object"}
    for name, value in (body.model_extra or {}).items():
        # Anything else goes to the backend as it would from a chat request (llama.cpp's
        # top_k); the deployment's capabilities refuse, by name, what it does not honour.
        if value is None:
            continue
        if name in _CHAT_ONLY or name in chat:
            instead = _CHAT_ONLY.get(name)
            hint = f"; use '{instead}'" if instead else ""
            raise InvalidArgument(
                f"The parameter '{name}' is not part of the Responses API{hint}.", field=name
            )
        chat[name] = value
    return ChatRequest.of(chat)


def _refuse_unsupported(body: ResponsesRequest) -> None:
    if body.previous_response_id is not None:
        raise InvalidArgument(
            f"The parameter 'previous_response_id' is not supported: {_STATELESS}",
            field="previous_response_id",
        )
    if body.conversation is not None:
        raise InvalidArgument(
            f"The parameter 'conversation' is not supported: {_STATELESS}", field="conversation"
        )
    if body.store:
        raise InvalidArgument(
            "Responses are not stored by the gateway: pass 'store': false or leave it out.",
            field="store",
        )
    if body.background:
        raise InvalidArgument(
            "Background responses are not supported (they would have to be stored): pass "
            "'background': false or leave it out.",
            field="background",
        )
    if body.include:
        raise InvalidArgument(
            "The parameter 'include' is not supported: the gateway adds nothing to a "
            "response's output; leave it out.",
            field="include",
        )
    if body.reasoning is not None and any(
        v is not None for v in body.reasoning.model_dump().values()
    ):
        raise InvalidArgument(
            "The parameter 'reasoning' is not supported by the gateway's models; leave it out.",
            field="reasoning",
        )
    if body.truncation == "auto":
        raise InvalidArgument(
            "Only 'truncation': 'disabled' is supported: input that does not fit the model's "
            "context is an error, never silently shortened.",
            field="truncation",
        )
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise InvalidArgument(
            "The parameter 'text.verbosity' is not supported (only 'medium', the default).",
            field="text.verbosity",
        )
    if body.stream_options is not None and not body.stream:
        raise InvalidArgument(
            "The 'stream_options' parameter is only allowed when 'stream' is true.",
            field="stream_options",
        )
    for name in ("max_tool_calls", "prompt"):
        if getattr(body, name) is not None:
            raise InvalidArgument(
                f"The parameter '{name}' is not supported by the gateway; leave it out.",
                field=name,
            )
    if body.top_logprobs:
        raise InvalidArgument(
            "The parameter 'top_logprobs' is not supported on /v1/responses; use "
            "/v1/chat/completions for log probabilities.",
            field="top_logprobs",
        )


def _messages(items: list[InputItem] | str) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if isinstance(item, InputMessage):
            messages.append(_message(index, item))
        elif isinstance(item, FunctionCallInput):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "refusal" not in last:
                # A model's turn: its text (if any) and its function calls, in one message.
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = item.output
            if not isinstance(output, str):
                output = "".join(part.text for part in output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


def _message(index: int, item: InputMessage) -> dict[str, Any]:
    # `developer` is OpenAI's newer name for `system`; open models' chat templates know only
    # the older one.
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    texts: list[str] = []
    refusal = ""
    for number, part in enumerate(item.content):
        if role != "assistant" and part.type != "input_text":
            raise InvalidArgument(
                f"Invalid value for 'input[{index}].content[{number}].type': a {item.role} "
                "message holds 'input_text' parts.",
                field=f"input[{index}].content[{number}].type",
            )
        if isinstance(part, InputRefusal):
            refusal += part.refusal
        else:
            texts.append(part.text)
    message: dict[str, Any] = {"role": role, "content": _text(texts)}
    if refusal:
        message["refusal"] = refusal
    return message


def _text(texts: list[str]) -> str | list[dict[str, Any]]:
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": text} for text in texts]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _ending(finish_reason: object) -> tuple[Status, IncompleteDetails | None]:
    if finish_reason == "length":
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", IncompleteDetails(reason="content_filter")
    return "completed", None


def _usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=completion,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=prompt + completion,
    )


def _echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request's parameters as a response repeats them."""
    echo: dict[str, Any] = {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": [tool.model_dump(mode="json") for tool in body.tools or ()],
        "user": body.user,
        "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key,
    }
    if body.parallel_tool_calls is not None:
        echo["parallel_tool_calls"] = body.parallel_tool_calls
    if isinstance(body.tool_choice, ToolChoiceFunction):
        echo["tool_choice"] = body.tool_choice.model_dump(mode="json")
    elif body.tool_choice is not None:
        echo["tool_choice"] = body.tool_choice
    if body.text is not None:
        text: dict[str, Any] = {"format": {"type": "text"}}
        if body.text.format is not None:
            text["format"] = body.text.format.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        if body.text.verbosity is not None:
            text["verbosity"] = body.text.verbosity
        echo["text"] = text
    return echo


class ResponsesTranslation:
    """One Responses request answered over chat completions (a `routing.Translation`)."""

    label = "responses"

    def __init__(self, body: ResponsesRequest) -> None:
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.model = body.model
        self._echo = _echo(body)

    def response(
        self,
        status: Status,
        output: list[dict[str, Any]],
        usage: ResponseUsage | None = None,
        *,
        incomplete: IncompleteDetails | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        """The response object in `status`, with the request's parameters echoed."""
        done = status in ("completed", "incomplete")
        return ResponseObject.model_validate(
            {
                "id": self.id,
                "created_at": self.created_at,
                "completed_at": int(time.time()) if done else None,
                "status": status,
                "error": error,
                "incomplete_details": incomplete,
                "model": self.model,
                "output": output,
                "usage": usage,
                **self._echo,
            }
        )

    def answer(self, answer: BaseModel) -> bytes:
        """The response object for a chat completion."""
        assert isinstance(answer, ChatCompletion)
        choice = next((c for c in answer.choices if c.index == 0), None)
        status, incomplete = _ending(choice.finish_reason if choice else None)
        item_status: ItemStatus = "incomplete" if status == "incomplete" else "completed"
        text = (choice.message.content if choice else None) or ""
        calls = (choice.message.tool_calls if choice else None) or []
        output: list[dict[str, Any]] = []
        if text or not calls:
            output.append(_message_item(_id("msg"), item_status, text))
        for call in calls:
            output.append(
                _call_item(
                    _id("fc"), item_status, call.id, call.function.name, call.function.arguments
                )
            )
        response = self.response(status, output, _chat_usage(answer.usage), incomplete=incomplete)
        return response.model_dump_json().encode()

    def events(self) -> ResponsesStream:
        return ResponsesStream(self)


def _chat_usage(usage: Usage | None) -> ResponseUsage | None:
    if usage is None:
        return None
    prompt_details, completion_details = (
        usage.prompt_tokens_details,
        usage.completion_tokens_details,
    )
    return _usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        (prompt_details.cached_tokens or 0) if prompt_details else 0,
        (completion_details.reasoning_tokens or 0) if completion_details else 0,
    )


def _message_item(item_id: str, status: ItemStatus, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _call_item(
    item_id: str, status: ItemStatus, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


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
            return _message_item(self.id, self.status, self.text)
        return _call_item(self.id, self.status, self.call_id, self.name, self.text)


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
                _id("fc"),
                len(self._items),
                call_id=call_id if isinstance(call_id, str) and call_id else _id("call"),
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
        item = _Item("message", _id("msg"), len(self._items))
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
                    "part": _text_part(""),
                },
            )
        return out

    def _close(self) -> bytes:
        """Close the item being streamed, if any."""
        item = self._current
        if item is None:
            return b""
        self._current = None
        item.status = "incomplete" if _ending(self._finish_reason)[1] else "completed"
        at = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            text = item.text
            out = self._event(
                "response.output_text.done",
                {**at, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done", {**at, "content_index": 0, "part": _text_part(text)}
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
        status, incomplete = _ending(self._finish_reason)
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
        return _message_item(item.id, "in_progress", None)
    return _call_item(item.id, "in_progress", item.call_id, item.name, "")


def _usage_of(usage: dict[str, Any]) -> ResponseUsage:
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return _usage(
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        _int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0,
    )
