"""Admitting a request by its API key and scope: as a FastAPI dependency (`requires`), or as a
plain call at the top of the hot inference endpoints (`admit`, `BEARER_SECURITY`), where
FastAPI's dependency machinery costs more than the check itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from forgeline_gateway.security.keys import Authenticator, Principal, Scope, require_scope

__all__ = ["BEARER_SECURITY", "PRINCIPAL_STATE", "admit", "requires"]

#: Where the middleware that checks the key before the body leaves the caller it found.
PRINCIPAL_STATE = "forgeline_principal"

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
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if not isinstance(principal, Principal):
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
