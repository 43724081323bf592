"""The Responses API in terms of chat completions, which every backend answers.

* `chat_request` (`request_to_chat`): a Responses request becomes a chat completion request
  (``instructions`` a leading system message, input items messages, function tools chat tools,
  ``text.format`` ``response_format``); what it cannot honour is a 400 naming the parameter.
* `ResponsesTranslation.answer` (`completion_to_response`): a chat completion becomes a
  ``response`` object.
* `ResponsesStream` (`chunks_to_events`): ``chat.completion.chunk`` events become the Responses
  API's events (``response.created`` … ``response.completed``), one upstream chunk at a time.

`response_parts` holds what the last two both build responses from. This module is the one
place callers import the translation from, whichever module holds each part.

The gateway keeps no responses: nothing here is stored, and what would need a stored response
(``previous_response_id``, ``conversation``, ``store: true``, ``background: true``) is refused.
"""

from __future__ import annotations

from forgeline_gateway.api.responses.chunks_to_events import ResponsesStream
from forgeline_gateway.api.responses.completion_to_response import ResponsesTranslation
from forgeline_gateway.api.responses.request_to_chat import ChatRequest, chat_request, public_param

__all__ = [
    "ChatRequest",
    "ResponsesStream",
    "ResponsesTranslation",
    "chat_request",
    "public_param",
]
