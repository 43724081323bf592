"""The one mapping between Forgeline's domain errors, gRPC status codes and HTTP statuses.

Services raise a `ForgelineError` subclass; the kit's server interceptor turns it into a gRPC
status (code, the message as details, the field name in trailing metadata). Clients built with
`forgeline_kit.grpc.client.make_channel` turn the status back into the same domain error type, so
the gateway and the CLI catch `NotFound` rather than inspect status codes; the gateway then uses
`http_status_for` to answer over HTTP.

Messages are shown to users as they are: say what was wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import grpc

__all__ = [
    "FIELD_METADATA_KEY",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "ForgelineError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_for_status",
    "error_from_rpc_error",
    "grpc_status_for",
    "http_status_for",
]

#: Trailing-metadata key that carries `ForgelineError.field` across gRPC.
FIELD_METADATA_KEY = "forgeline-error-field"

#: What a client is told when a handler fails in a way nobody anticipated. The details stay in
#: the server's log; a traceback never reaches the client.
INTERNAL_MESSAGE = "internal error: the service failed unexpectedly; see its log for details"


class ForgelineError(Exception):
    """Base of every domain error; carries a message a user can act on.

    Args:
        message: what went wrong and, where possible, how to fix it.
        field: the request field at fault (for example ``"version.artifacts[2].digest"``).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    #: The HTTP status of the same condition (after google/rpc/code.proto's mapping).
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        field = f", field={self.field!r}" if self.field else ""
        return f"{type(self).__name__}({self.message!r}{field})"


class InvalidArgument(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The request is malformed or names something impossible, whatever the system's state."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """Something the request names does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """What the request would create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The system is not in a state where the request can run (retrying as is will not help)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class PermissionDenied(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unauthenticated(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The caller did not prove who it is (missing or unknown credentials)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ResourceExhausted(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """A quota, a queue or a resource (disk, GPU memory) is full; retry later or ask for less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The service or one it depends on cannot be reached now; retrying later may succeed.

    Clients made by `make_channel` retry this code automatically with backoff, so raise it only
    where running the same request again is safe.
    """

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Aborted(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """A concurrent change won (for example an alias moved meanwhile); retry from a fresh read."""

    code = grpc.StatusCode.ABORTED
    http_status = 409


class Cancelled(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The operation was cancelled, usually by the caller."""

    code = grpc.StatusCode.CANCELLED
    http_status = 499


class DeadlineExceeded(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The operation did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unimplemented(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """The operation is not supported by this service or in this configuration."""

    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Internal(ForgelineError):  # noqa: N818 (named after its gRPC status code)
    """A failure inside the service that the caller cannot fix."""

    code = grpc.StatusCode.INTERNAL
    http_status = 500


_ERROR_BY_CODE: Mapping[grpc.StatusCode, type[ForgelineError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        Aborted,
        Cancelled,
        DeadlineExceeded,
        Unimplemented,
        Internal,
    )
} | {
    # Codes Forgeline never raises itself, folded onto the nearest domain error.
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def grpc_status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details a client should see for `error`.

    A `ForgelineError` keeps its code and message; anything else is INTERNAL with a generic
    message, because its text may reveal internals (paths, addresses, traces).
    """
    if isinstance(error, ForgelineError):
        return error.code, error.message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def http_status_for(error: BaseException) -> int:
    """The HTTP status for `error` (500 for anything that is not a `ForgelineError`)."""
    return error.http_status if isinstance(error, ForgelineError) else 500


def trailing_metadata_for(error: ForgelineError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries `error`'s structured parts next to its status."""
    return ((FIELD_METADATA_KEY, error.field),) if error.field else ()


def error_for_status(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None = None,
) -> ForgelineError:
    """The domain error for a failed call's status.

    Raises:
        ValueError: `code` is OK, which is not an error.
    """
    if code == grpc.StatusCode.OK:
        raise ValueError("status OK is not an error")
    field = None
    for key, value in trailing_metadata or ():
        if key == FIELD_METADATA_KEY:
            field = value.decode() if isinstance(value, bytes) else value
    message = details or f"the call failed with status {code.name} and no message"
    return _ERROR_BY_CODE.get(code, Internal)(message, field=field)


def error_from_rpc_error(error: grpc.RpcError) -> ForgelineError:
    """The domain error for a failed call, from grpc.aio's `AioRpcError` or a sync `grpc.Call`.

    Re-raise it ``from`` the original so the gRPC details stay in the traceback::

        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from exc
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    return error_for_status(code, details, _trailing_metadata_of(error))


def _trailing_metadata_of(error: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    if not hasattr(error, "trailing_metadata"):
        return []
    if isinstance(error, grpc.aio.AioRpcError):
        # grpc.aio's Metadata iterates as (key, value) pairs.
        return list(error.trailing_metadata() or ())
    # The sync API's entries are (key, value) named tuples.
    return [(entry.key, entry.value) for entry in error.trailing_metadata() or ()]
