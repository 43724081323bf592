"""The gateway's checks before any route: the Host header, the API key and the request body
limit, in that order, as plain ASGI (Starlette's BaseHTTPMiddleware would buffer streams).

Host: a request whose ``Host`` is not one the gateway answers to (``TRUSTED_HOSTS``; without
keys, the loopback names only) is refused with 400 before anything else runs, so a web page whose
domain was rebound to 127.0.0.1 cannot drive a keyless local gateway from the user's browser.

Key: a request to the API (``/v1/``) without a valid key is answered 401 before its body is read,
so nobody without a key can make the gateway buffer or parse megabytes; the route then checks the
key's scope with the caller found here.

Body: a declared ``Content-Length`` over the limit is refused before a byte is read; a body without
one (chunked) is counted as it arrives and refused the moment it passes the limit. Either way the
client gets OpenAI's error shape with 413.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forgeline_gateway.errors import PayloadTooLarge, error_response
from forgeline_gateway.security.auth import PRINCIPAL_STATE
from forgeline_gateway.security.keys import Authenticator
from forgeline_kit.errors import InvalidArgument, Unauthenticated

__all__ = ["BodyLimitMiddleware", "KeyBeforeBodyMiddleware", "TrustedHostMiddleware"]


class KeyBeforeBodyMiddleware:
    """Answers 401 to an API request (a path under ``/v1/``) without a valid key before anything
    reads its body; the caller found is left in the request's state for the route's scope check.
    The authenticator is the app's (``app.state.authenticator``, made at start-up)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator | None = getattr(scope["app"].state, "authenticator", None)
        if authenticator is not None and authenticator.required:
            try:
                principal = await authenticator.authenticate(_header(scope, b"authorization"))
            except Unauthenticated as error:
                response = error_response(error)
                response.headers["Connection"] = "close"  # the unread body goes with it
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        await self.app(scope, receive, send)


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


class TrustedHostMiddleware:
    """Refuses HTTP requests whose ``Host`` (port aside) matches none of `allowed` (``"*"``: any;
    ``"*.example.com"``: that domain's subdomains) with OpenAI's error shape and 400."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = {host.lower() for host in allowed if not host.startswith("*.")}
        self.suffixes = tuple(host[1:].lower() for host in allowed if host.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any or self._trusted(_host(scope)):
            await self.app(scope, receive, send)
            return
        error = InvalidArgument(
            "This gateway does not answer to the host this request names. Call it by one of "
            "the names in FORGELINE_GATEWAY_TRUSTED_HOSTS (without API keys: localhost or "
            "127.0.0.1), or add the name there.",
            field="Host",
        )
        await error_response(error, code="invalid_host")(scope, receive, send)

    def _trusted(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


def _host(scope: Scope) -> str:
    """The Host header without its port (``[::1]:8080`` gives ``[::1]``), lower case."""
    host = (_header(scope, b"host") or "").lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


class BodyLimitMiddleware:
    """Refuses HTTP requests whose body exceeds `max_bytes` with 413; requests for which
    `exempt` is true pass untouched (an endpoint that streams its body and limits it itself)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, exempt: Callable[[Scope], bool] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope)):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body here, counting, then hand it on: the JSON parser needs all of it anyway.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the client's disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(
            f"The request body is larger than the {self.max_bytes} bytes this gateway accepts."
        )
        response = error_response(error)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
