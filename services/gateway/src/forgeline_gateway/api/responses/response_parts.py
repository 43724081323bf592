"""The pieces a translated response is built of, shared by the whole answer
(`completion_to_response`) and the streamed one (`chunks_to_events`): item ids, output items
(an assistant message, a function call) and their text parts, the status a chat
``finish_reason`` means, and the usage figures.

Both translations must build these identically (a streamed response's final object is the one a
non-streamed request would get), which is why they live in one place.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from forgeline_gateway.api.responses.protocol import (
    IncompleteDetails,
    InputTokensDetails,
    OutputTokensDetails,
    ResponseUsage,
)

__all__ = [
    "ItemStatus",
    "Status",
    "call_item",
    "finish_status",
    "message_item",
    "new_id",
    "response_usage",
    "text_part",
]

Status = Literal["completed", "failed", "in_progress", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def finish_status(finish_reason: object) -> tuple[Status, IncompleteDetails | None]:
    if finish_reason == "length":
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", IncompleteDetails(reason="content_filter")
    return "completed", None


def response_usage(
    prompt: int, completion: int, cached: int = 0, reasoning: int = 0
) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=completion,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=prompt + completion,
    )


def message_item(item_id: str, status: ItemStatus, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def call_item(
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
