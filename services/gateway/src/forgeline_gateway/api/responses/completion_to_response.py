"""A chat completion as the Responses API's ``response`` object.

`ResponsesTranslation` is one Responses request answered over chat completions (a
`routing.Translation`): it holds what every form of the answer repeats (the response id, its
creation time, the request's parameters echoed) and makes the whole ``response`` object from a
chat completion; `ResponsesTranslation.events` hands a streamed answer to `chunks_to_events`.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from forgeline_gateway.api.chat.protocol import ChatCompletion
from forgeline_gateway.api.common import Usage
from forgeline_gateway.api.responses.chunks_to_events import ResponsesStream
from forgeline_gateway.api.responses.protocol import (
    IncompleteDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    ToolChoiceFunction,
)
from forgeline_gateway.api.responses.response_parts import (
    ItemStatus,
    Status,
    call_item,
    finish_status,
    message_item,
    new_id,
    response_usage,
)

__all__ = ["ResponsesTranslation"]


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
        self.id = new_id("resp")
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
        status, incomplete = finish_status(choice.finish_reason if choice else None)
        item_status: ItemStatus = "incomplete" if status == "incomplete" else "completed"
        text = (choice.message.content if choice else None) or ""
        calls = (choice.message.tool_calls if choice else None) or []
        output: list[dict[str, Any]] = []
        if text or not calls:
            output.append(message_item(new_id("msg"), item_status, text))
        for call in calls:
            output.append(
                call_item(
                    new_id("fc"), item_status, call.id, call.function.name, call.function.arguments
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
    return response_usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        (prompt_details.cached_tokens or 0) if prompt_details else 0,
        (completion_details.reasoning_tokens or 0) if completion_details else 0,
    )
