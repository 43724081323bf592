"""A Responses API request as the chat completion request that answers it.

`chat_request` makes it: ``instructions`` a leading system message, input items messages,
function tools chat tools, ``text.format`` ``response_format``; what the gateway cannot honour
(anything that needs a stored response, or has no chat counterpart) is a 400 naming the
parameter. `public_param` renames, in an error the backend or the deployment's capabilities
raise about the chat request, the chat parameter to the Responses one the caller sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import PrivateAttr

from forgeline_gateway.api.common import OpenAIRequest
from forgeline_gateway.api.responses.protocol import (
    FunctionCallInput,
    InputItem,
    InputMessage,
    InputRefusal,
    ResponsesRequest,
    TextFormatText,
    ToolChoiceFunction,
)
from forgeline_kit.errors import InvalidArgument

__all__ = ["ChatRequest", "chat_request", "public_param"]

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
