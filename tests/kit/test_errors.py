"""One mapping between domain errors, gRPC status codes and HTTP statuses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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


def test_sync_client_gets_the_domain_error_with_its_field() -> None:
    """A client on gRPC's sync API (a script, a notebook) gets the same error as grpc.aio ones."""
    sent = errors.NotFound("model 'tiny' has no version 7", field="version")

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(errors.trailing_metadata_for(sent))
        context.abort(*errors.grpc_status_for(sent))

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "forgeline.test.v1.Failing", {"Fail": grpc.unary_unary_rpc_method_handler(fail)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/forgeline.test.v1.Failing/Fail"
            )
            with pytest.raises(grpc.RpcError) as failure:
                call(b"", timeout=10)
    finally:
        server.stop(None)

    received = errors.error_from_rpc_error(failure.value)
    assert type(received) is errors.NotFound
    assert (received.message, received.field) == (sent.message, sent.field)
