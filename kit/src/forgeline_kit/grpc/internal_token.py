"""Internal gRPC calls authenticated by one shared token: ``FORGELINE_INTERNAL_TOKEN``.

The registry, trainer and converter trust whoever calls them: an unauthenticated caller on the
internal network could push models, start jobs or read datasets. With the token set in every
service's environment (and the CLI's, where it calls services directly), each call carries
``authorization: Bearer <token>`` and a service refuses a call without it (UNAUTHENTICATED).
Health checks (``grpc.health.v1.Health``) stay open, so container healthchecks and load
balancers need no secret. Unset, nothing is checked: the embedded default on loopback.

One variable, not one per service: it is the same secret on both sides of every call, and an
operator sets it once (compose's ``.env``, a Kubernetes Secret).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "INTERNAL_TOKEN_VARIABLE",
    "MIN_TOKEN_LENGTH",
    "InternalTokenError",
    "InternalTokenInterceptor",
    "call_metadata",
    "internal_token",
]

INTERNAL_TOKEN_VARIABLE: Final = "FORGELINE_INTERNAL_TOKEN"
MIN_TOKEN_LENGTH: Final = 16
HEALTH_METHOD_PREFIX: Final = "/grpc.health.v1.Health/"
_REFUSED: Final = (
    "this Forgeline service requires the internal token: set FORGELINE_INTERNAL_TOKEN in the "
    "caller's environment to the value the services have"
)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]"


class InternalTokenError(ValueError):
    """The token in the environment is unusable; the message names the variable."""


def internal_token() -> str | None:
    """The shared token from the environment, or None when internal calls are not checked.

    Raises:
        InternalTokenError: it is set but too short to be a secret.
    """
    token = os.environ.get(INTERNAL_TOKEN_VARIABLE, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise InternalTokenError(
            f"{INTERNAL_TOKEN_VARIABLE} is {len(token)} characters long; use a random secret of "
            f"at least {MIN_TOKEN_LENGTH} (for example: openssl rand -hex 24)"
        )
    return token


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a call carries for `token` (nothing without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED), health checks
    aside."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        if self._authorized(handler_call_details.invocation_metadata or ()):
            return handler
        return _refusing(handler)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata:
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False


def _refusing(handler: _Handler) -> _Handler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSED)

    codecs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
