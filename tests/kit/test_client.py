"""The kit's client channel: waits for a server that is not up yet, retries UNAVAILABLE,
applies default deadlines, and raises domain errors."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import grpc
import pytest

from forgeline_kit import errors
from forgeline_kit.grpc.client import RetryPolicy, default_service_config, make_channel

from .conftest import StartService
from .echo_service import SERVICE_NAME, EchoReply, EchoRequest
from .harness import ServiceProcess


def method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/{name}",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for_state(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity) -> None:
    async with asyncio.timeout(30):
        while (state := channel.get_state()) != wanted:
            await channel.wait_for_state_change(state)


async def test_a_call_made_before_the_server_listens_succeeds_once_it_does(
    start_service: StartService,
) -> None:
    port = free_port()
    async with make_channel(f"127.0.0.1:{port}") as channel:
        call = asyncio.ensure_future(method(channel, "Say")(EchoRequest(text="early")))
        # The channel tried to connect and found nothing listening.
        await wait_for_state(channel, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        assert not call.done()

        await asyncio.to_thread(start_service, {"FORGELINE_ECHO_GRPC_PORT": str(port)})
        serving = time.monotonic()
        reply = await asyncio.wait_for(call, 20)
        answered = time.monotonic() - serving

    assert reply.text == "early"
    # The reconnection backoff is capped at 2 s, so the call goes through soon after start.
    assert answered < 5, answered


async def test_unavailable_is_retried_with_backoff(echo: ServiceProcess) -> None:
    async with make_channel(echo.target) as channel:
        reply = await method(channel, "Flaky")(EchoRequest(text="retried", fail_times=2))
    assert reply.attempt == 3


async def test_retries_are_bounded(echo: ServiceProcess) -> None:
    async with make_channel(echo.target, retry=RetryPolicy(max_attempts=3)) as channel:
        with pytest.raises(errors.Unavailable, match="attempt 3 fails on purpose"):
            await method(channel, "Flaky")(EchoRequest(text="bounded", fail_times=10))


async def test_a_plain_channel_does_not_retry(echo: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(echo.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await method(channel, "Flaky")(EchoRequest(text="plain", fail_times=1), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_get_a_default_deadline(echo: ServiceProcess) -> None:
    async with make_channel(echo.target, default_timeout=0.5) as channel:
        started = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            await method(channel, "Say")(EchoRequest(text="held", hold=True))
    assert time.monotonic() - started < 10


async def test_without_wait_for_ready_an_absent_server_fails_fast() -> None:
    async with make_channel(f"127.0.0.1:{free_port()}", wait_for_ready=False) as channel:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            await method(channel, "Say")(EchoRequest(text="nobody"))
    assert time.monotonic() - started < 10


def test_the_service_config_is_what_grpc_expects() -> None:
    config = json.loads(default_service_config().to_json())
    assert config == {
        "methodConfig": [
            {
                "name": [{}],
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.100s",
                    "maxBackoff": "2.000s",
                    "backoffMultiplier": 2.0,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
