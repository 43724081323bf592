"""Admitting a request by its API key and scope: as a FastAPI dependency (`requires`), or as a
plain call at the top of the hot inference endpoints (`admit`, `BEARER_SECURITY`), where
FastAPI's dependency machinery costs more than the check itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from forgeline_gateway.security.keys import Authenticator, Principal, Scope, require_scope

__all__ = ["BEARER_SECURITY", "admit", "requires"]

# Declares Bearer auth in the OpenAPI document; checking is ours (OpenAI-shaped 401s).
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer flk-...`")

#: The OpenAPI `security` of an operation that calls `admit` itself.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


async def admit(request: Request, scope: Scope) -> Principal:
    """The caller of `request` if its key has `scope`.

    Raises:
        Unauthenticated: no valid key (401).
        PermissionDenied: the key lacks `scope` (403).
    """
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate(request.headers.get("authorization"))
    require_scope(principal, scope)
    return principal


def requires(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers whose key has `scope` (401 without a valid key, 403
    without the scope)."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        return await admit(request, scope)

    return dependency
