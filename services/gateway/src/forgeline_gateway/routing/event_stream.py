"""The HTTP response that carries a relayed event stream to the client.

Starlette's `StreamingResponse` watches for the client's departure itself, with an anyio task
group and a second task per response; here the request's `ClientWatch` already does, from before
the backend was called, so this response only sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from forgeline_gateway.routing.client_watch import ClientWatch

__all__ = ["EventSource", "EventStreamResponse"]


class EventSource(Protocol):
    """Events to send, and the clean-up owed whether or not they were all sent."""

    def __aiter__(self) -> AsyncGenerator[bytes, None]: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    """Sends `events` as ``text/event-stream``; a client that leaves (`watch`) ends it, and
    `events` is closed either way."""

    media_type = "text/event-stream"

    def __init__(
        self, events: EventSource, watch: ClientWatch, headers: Mapping[str, str] | None = None
    ) -> None:
        self.events = events
        self.watch = watch
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = aiter(self.events)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.watch.claim():
                raise
            # The client left: nobody to answer, and the server knows the connection is gone.
        finally:
            self.watch.stop()
            await events.aclose()
            await self.events.aclose()
