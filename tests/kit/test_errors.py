"""One mapping between domain errors, gRPC status codes and HTTP statuses."""

from __future__ import annotations

import grpc
import pytest

from forgeline_kit import errors

EXPECTED = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.Aborted, grpc.StatusCode.ABORTED, 409),
    (errors.Cancelled, grpc.StatusCode.CANCELLED, 499),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED, 501),
    (errors.Internal, grpc.StatusCode.INTERNAL, 500),
]


@pytest.mark.parametrize(("error_type", "code", "http"), EXPECTED)
def test_each_domain_error_maps_both_ways(
    error_type: type[errors.ForgelineError], code: grpc.StatusCode, http: int
) -> None:
    error = error_type("model 'tiny' has no version 7", field="version")

    assert errors.grpc_status_for(error) == (code, "model 'tiny' has no version 7")
    assert errors.http_status_for(error) == http
    back = errors.error_for_status(code, error.message, errors.trailing_metadata_for(error))
    assert type(back) is error_type
    assert (back.message, back.field) == (error.message, error.field)


def test_every_status_code_has_a_domain_error() -> None:
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert isinstance(errors.error_for_status(code, "x"), errors.ForgelineError)
    with pytest.raises(ValueError, match="not an error"):
        errors.error_for_status(grpc.StatusCode.OK, "")


def test_other_exceptions_reveal_nothing() -> None:
    leak = KeyError("/var/lib/forgeline/secret")
    assert errors.grpc_status_for(leak) == (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
    assert errors.http_status_for(leak) == 500
