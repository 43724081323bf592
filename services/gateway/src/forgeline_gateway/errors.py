"""Every failure as OpenAI shapes it: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise the kit's domain errors (`forgeline_kit.errors`); the status comes from the kit's
one mapping (`http_status_for`). The few HTTP conditions the kit has no class for (413, 502, a
429 that carries Retry-After) are subclasses here, so they still map through the same function.
Messages are written for the API's users: they never carry a backend's address or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from forgeline_kit.errors import (
    ForgelineError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    http_status_for,
)

__all__ = [
    "ADMIN_ERRORS",
    "INFERENCE_ERRORS",
    "BadGateway",
    "ErrorBody",
    "ErrorResponse",
    "Overloaded",
    "PayloadTooLarge",
    "error_body",
    "error_response",
    "install_error_handlers",
    "param_from_loc",
]

log = logging.getLogger(__name__)


class PayloadTooLarge(InvalidArgument):
    """The request body is larger than the gateway accepts."""

    http_status = 413


class BadGateway(Unavailable):
    """A backend answered with something that is not a valid response (or failed mid-way)."""

    http_status = 502


class Overloaded(ResourceExhausted):
    """Every instance of a model is at its in-flight limit; the client should retry later."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ErrorBody(BaseModel):
    """The inside of an OpenAI error response."""

    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """An OpenAI error response, the body of every non-2xx answer of the gateway."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


def _documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request: the message names the parameter (`param`).",
        401: "No API key, or an unknown or revoked one.",
        403: "The API key lacks the scope this endpoint needs.",
        404: "Unknown model (`code: model_not_found`) or deployment.",
        409: "A deployment of that name exists already.",
        413: "The request body is larger than the gateway accepts.",
        429: "Every instance of the model is busy; retry after `Retry-After` seconds.",
        500: "The gateway failed unexpectedly.",
        502: "The backend failed or answered outside OpenAI's schema.",
        503: "No instance of the model could be reached.",
        504: "The backend did not answer in time.",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


# OpenAI's `type` for each status; anything 5xx is a server_error.
_TYPE_BY_STATUS: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    501: "invalid_request_error",
}

_CODE_BY_STATUS: Mapping[int, str] = {
    401: "invalid_api_key",
    403: "insufficient_scope",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "backend_unavailable",
    504: "backend_timeout",
}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    """The OpenAI error body for `status`."""
    error_type = _TYPE_BY_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return ErrorResponse(
        error=ErrorBody(
            message=message, type=error_type, param=param, code=code or _CODE_BY_STATUS.get(status)
        )
    )


def _render(status: int, body: ErrorResponse, headers: Mapping[str, str] | None) -> Response:
    return Response(
        body.model_dump_json().encode(),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def error_response(error: BaseException, *, code: str | None = None) -> Response:
    """The HTTP response for any exception: a domain error keeps its message and field; anything
    else becomes a generic 500 (its details go to the log only)."""
    status = http_status_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, ForgelineError):
        code = code or getattr(error, "openai_code", None)
        body = error_body(status, error.message, param=error.field, code=code)
    else:
        log.error("unhandled error", exc_info=error)
        body = error_body(500, "internal error: the gateway failed unexpectedly; see its log")
    return _render(status, body, headers)


def param_from_loc(loc: Sequence[int | str], body: Any) -> str | None:
    """The request parameter a validation error points at, as OpenAI writes it
    (``messages[0].content``), from pydantic's error location.

    Pydantic puts the names of union members into locations (``'user'`` for a tagged message,
    ``'str'`` for one arm of ``str | list``); they name no part of the request. Walking the location
    alongside the request body keeps only the steps that exist in the body, and the last step of a
    missing field.
    """
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path = ""
    node = body
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            path += f".{part}" if path else part
            node = node[part]
        elif last and isinstance(part, str) and isinstance(node, dict):
            path += f".{part}" if path else part
    return path or None


def _validation_message(error: Mapping[str, Any], param: str | None) -> str:
    message = str(error.get("msg", "is not valid"))
    message = message[:1].lower() + message[1:]
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'."
    if error.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    if error.get("type") in ("model_attributes_type", "model_type"):
        return "The request body must be a JSON object."
    where = f"'{param}'" if param else "the request body"
    return f"Invalid value for {where}: {message}."


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    param = param_from_loc(first.get("loc", ()), getattr(exc, "body", None))
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        # A tagged union (a message's `role`, a deployment's `backend`) names its tag field.
        tag = str((first.get("ctx") or {}).get("discriminator", "")).strip("'")
        param = f"{param}.{tag}" if param and tag else tag or param
    return _render(400, error_body(400, _validation_message(first, param), param=param), None)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    return _render(status, error_body(status, message), exc.headers)


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure of `app` answer in OpenAI's error shape."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(ForgelineError, _on_domain_error)
    app.add_exception_handler(Exception, _on_unexpected)


#: The error answers of the inference endpoints, for the OpenAPI document.
INFERENCE_ERRORS = _documented(400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
#: The error answers of the admin endpoints.
ADMIN_ERRORS = _documented(400, 401, 403, 404, 409, 413, 500, 502, 503, 504)
