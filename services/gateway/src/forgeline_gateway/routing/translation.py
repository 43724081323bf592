"""Serving another API over an endpoint's backends (the Responses API over chat completions).

The proxy routes, fails over, watches the client and counts a translated request exactly as it
does the endpoint's own; a `Translation` only decides what the client gets: the answer's body,
and the stream's events, turned out chunk by chunk as the backend's events come in.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

__all__ = ["StreamTranslator", "Translation"]


class StreamTranslator(Protocol):
    """Turns one backend event stream into the client's, as bytes come in
    (`forgeline_gateway.sse.StreamRelay` is the one of the endpoints' own streams)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the backend; return what can be sent to the client now."""
        ...

    def finish(self) -> bytes:
        """The backend's stream ended: what is still owed to the client."""
        ...

    def fail(self, message: str, error_type: str, code: str) -> bytes:
        """The stream broke off: the events that tell the client so, and end its stream."""
        ...


class Translation(Protocol):
    """One request of another API, answered over an endpoint's backends."""

    #: The ``endpoint`` label of the request's metrics.
    label: str

    def answer(self, answer: BaseModel) -> bytes:
        """The client's JSON body for the backend's (validated) non-streamed answer."""
        ...

    def events(self) -> StreamTranslator:
        """A translator for the backend's event stream."""
        ...
