"""A service built on the kit, probed from outside over real sockets: health, reflection,
/metrics, and domain errors as clients see them."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from forgeline_kit import errors
from forgeline_kit.grpc.client import make_channel

from .conftest import StartService
from .echo_service import SERVICE_NAME, EchoReply, EchoRequest
from .harness import ServiceProcess, labels, scrape

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

DOMAIN_ERRORS = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.FailedPrecondition,
    errors.PermissionDenied,
    errors.Unauthenticated,
    errors.ResourceExhausted,
    errors.Aborted,
    errors.Cancelled,
    errors.DeadlineExceeded,
    errors.Unimplemented,
    errors.Internal,
    # Unavailable is retried by the kit's client; test_client.py covers it.
]


def say(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Say",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )


def count(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
    return channel.unary_stream(
        f"/{SERVICE_NAME}/Count",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
async def test_health_reports_serving(echo: ServiceProcess, service: str) -> None:
    async with grpc.aio.insecure_channel(echo.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(echo: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(echo.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_services(echo: ServiceProcess) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    async with grpc.aio.insecure_channel(echo.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing, described = [r async for r in stub.ServerReflectionInfo(iter(requests))]

    names = {service.name for service in listing.list_services_response.service}
    assert {SERVICE_NAME, HEALTH, REFLECTION} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service if s.name == "Echo" for m in s.method}
    assert methods == {"Say", "Count", "Flaky"}


async def test_metrics_count_a_call_just_made(echo: ServiceProcess) -> None:
    call = labels(grpc_type="unary", grpc_service=SERVICE_NAME, grpc_method="Say")
    ok = call | labels(grpc_code="OK")
    before = await asyncio.to_thread(scrape, echo.metrics_url)

    async with grpc.aio.insecure_channel(echo.target) as channel:
        reply = await say(channel)(EchoRequest(text="hello"), timeout=10)
    after = await asyncio.to_thread(scrape, echo.metrics_url)

    assert reply.text == "hello"
    for name, series in [
        ("grpc_server_started_total", call),
        ("grpc_server_handled_total", ok),
        ("grpc_server_handling_seconds_count", ok),
    ]:
        assert after[(name, series)] == before.get((name, series), 0) + 1, name
    assert after[("grpc_server_handling_seconds_sum", ok)] > before.get(
        ("grpc_server_handling_seconds_sum", ok), 0
    )
    assert after[("grpc_server_in_flight_requests", call)] == 0
    # The process's own metrics come with the default collectors (prometheus_client.REGISTRY).
    assert any(name == "process_resident_memory_bytes" for name, _ in after)


async def test_metrics_count_streamed_replies_and_error_codes(echo: ServiceProcess) -> None:
    stream = labels(grpc_type="server_stream", grpc_service=SERVICE_NAME, grpc_method="Count")
    before = await asyncio.to_thread(scrape, echo.metrics_url)

    async with grpc.aio.insecure_channel(echo.target) as channel:
        replies = [r async for r in count(channel)(EchoRequest(text="x", count=3), timeout=10)]
        with pytest.raises(grpc.aio.AioRpcError):
            await say(channel)(EchoRequest(fail_with="NotFound"), timeout=10)
    after = await asyncio.to_thread(scrape, echo.metrics_url)

    assert [r.index for r in replies] == [0, 1, 2]
    sent = ("grpc_server_msg_sent_total", stream)
    assert after[sent] == before.get(sent, 0) + 3
    handled = ("grpc_server_handled_total", stream | labels(grpc_code="OK"))
    assert after[handled] == before.get(handled, 0) + 1
    not_found = (
        "grpc_server_handled_total",
        labels(
            grpc_type="unary", grpc_service=SERVICE_NAME, grpc_method="Say", grpc_code="NOT_FOUND"
        ),
    )
    assert after[not_found] == before.get(not_found, 0) + 1


@pytest.mark.parametrize("error_type", DOMAIN_ERRORS, ids=lambda t: t.__name__)
async def test_domain_error_reaches_the_client_as_its_status(
    echo: ServiceProcess, error_type: type[errors.ForgelineError]
) -> None:
    request = EchoRequest(fail_with=error_type.__name__, field="text")
    expected = f"echo was told to fail with {error_type.__name__}"

    async with grpc.aio.insecure_channel(echo.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await say(channel)(request, timeout=10)
    assert raw.value.code() == error_type.code
    assert raw.value.details() == expected

    async with make_channel(echo.target) as channel:
        with pytest.raises(errors.ForgelineError) as domain:
            await say(channel)(request)
    assert type(domain.value) is error_type
    assert domain.value.message == expected
    assert domain.value.field == "text"
    assert isinstance(domain.value.__cause__, grpc.aio.AioRpcError)


async def test_unexpected_exception_is_internal_without_its_details(
    echo: ServiceProcess,
) -> None:
    async with make_channel(echo.target) as channel:
        with pytest.raises(errors.Internal) as failure:
            await say(channel)(EchoRequest(text="boom", fail_with="crash"))

    assert failure.value.message == errors.INTERNAL_MESSAGE
    assert "secret" not in str(failure.value.__cause__)
    # The operator, unlike the client, gets the whole story in the log.
    logged = echo.wait_for_record(lambda r: r["level"] == "ERROR" and "Say" in r["message"])
    assert "secret internal detail" in logged["exception"]
    assert "Traceback" in logged["exception"]
    assert logged["grpc_code"] == "INTERNAL"


async def test_domain_error_after_streamed_replies(echo: ServiceProcess) -> None:
    received = []

    async def watch(channel: grpc.aio.Channel) -> None:
        request = EchoRequest(text="x", count=2, fail_with="FailedPrecondition")
        async for reply in count(channel)(request):
            received.append(reply.index)

    async with make_channel(echo.target) as channel:
        with pytest.raises(errors.FailedPrecondition, match="told to fail"):
            await watch(channel)
    assert received == [0, 1]


async def test_service_settings_reach_the_service(start_service: StartService) -> None:
    service = start_service({"FORGELINE_ECHO_GREETING": "hi "})
    async with make_channel(service.target) as channel:
        reply = await say(channel)(EchoRequest(text="there"))
    assert reply.text == "hi there"
