"""Graceful shutdown, as a client and the operator see it: SIGTERM drains in-flight calls."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import StartService
from .echo_service import SERVICE_NAME, EchoReply, EchoRequest
from .harness import ServiceProcess


def say(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Say",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )


async def hold_a_call(service: ServiceProcess, channel: grpc.aio.Channel) -> asyncio.Future[Any]:
    """Start a call the service holds until SIGUSR1; return once the service has it."""
    call: asyncio.Future[Any] = asyncio.ensure_future(
        say(channel)(EchoRequest(text="slow", hold=True), timeout=120)
    )
    await asyncio.to_thread(service.wait_for_record, lambda r: r["message"] == "holding a call")
    return call


async def refused(target: str, within: float) -> grpc.StatusCode:
    """Make new calls until one is refused (for up to `within` seconds): the code it got."""
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            try:
                await say(channel)(EchoRequest(text="new"), timeout=2, wait_for_ready=False)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
    raise AssertionError(f"new calls were still accepted {within} s after SIGTERM")


async def test_sigterm_drains_an_in_flight_call_then_exits_0(start_service: StartService) -> None:
    grace = 30.0
    service = start_service({"FORGELINE_ECHO_SHUTDOWN_GRACE_SECONDS": str(grace)})
    async with grpc.aio.insecure_channel(service.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        slow = await hold_a_call(service, channel)

        signalled = time.monotonic()
        service.signal(signal.SIGTERM)

        # Health turns NOT_SERVING, and the watch ends rather than holding the drain up.
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await watch.read() is grpc.aio.EOF
        # New calls are refused while the held call is still in flight.
        assert await refused(service.target, within=20) == grpc.StatusCode.UNAVAILABLE
        assert not slow.done()

        service.signal(signal.SIGUSR1)
        reply = await slow

    assert reply.text == "slow"
    assert await asyncio.to_thread(service.wait, grace) == 0
    assert time.monotonic() - signalled < grace
    messages = [record["message"] for record in service.records()]
    assert "echo stopped hook ran" in messages


async def test_calls_that_outlast_the_grace_period_are_cancelled(
    start_service: StartService,
) -> None:
    grace = 1.0
    service = start_service({"FORGELINE_ECHO_SHUTDOWN_GRACE_SECONDS": str(grace)})
    async with grpc.aio.insecure_channel(service.target) as channel:
        slow = await hold_a_call(service, channel)
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.wait, 30)
        exited = time.monotonic() - signalled
        outcome = await asyncio.gather(slow, return_exceptions=True)

    assert code == 0
    assert grace <= exited < grace + 10
    assert isinstance(outcome[0], grpc.aio.AioRpcError)
    assert outcome[0].code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


async def test_a_second_signal_cuts_the_drain_short(start_service: StartService) -> None:
    grace = 120.0
    service = start_service({"FORGELINE_ECHO_SHUTDOWN_GRACE_SECONDS": str(grace)})
    async with grpc.aio.insecure_channel(service.target) as channel:
        slow = await hold_a_call(service, channel)
        service.signal(signal.SIGINT)
        await asyncio.to_thread(service.wait_for_record, lambda r: "draining" in r["message"])
        signalled = time.monotonic()
        service.signal(signal.SIGINT)
        code = await asyncio.to_thread(service.wait, 30)
        exited = time.monotonic() - signalled
        outcome = await asyncio.gather(slow, return_exceptions=True)

    assert code == 0
    assert exited < 10
    assert isinstance(outcome[0], grpc.aio.AioRpcError)
