"""Internal gRPC calls carry one shared token (FORGELINE_INTERNAL_TOKEN): a service started with
it refuses callers without it, answers callers whose channel the kit made with it, and keeps
health checks open for container healthchecks."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forgeline_kit import errors
from forgeline_kit.grpc.client import make_channel

from .conftest import StartService
from .echo_service import EchoReply, EchoRequest
from .test_service import count, say

TOKEN = "f" * 24


async def test_a_caller_without_the_token_is_refused(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = start_service({"FORGELINE_INTERNAL_TOKEN": TOKEN})
    monkeypatch.delenv("FORGELINE_INTERNAL_TOKEN", raising=False)

    async with make_channel(echo.target) as channel:
        with pytest.raises(errors.Unauthenticated, match="FORGELINE_INTERNAL_TOKEN"):
            await say(channel)(EchoRequest(text="hi"))
        with pytest.raises(errors.Unauthenticated):
            async for _ in count(channel)(EchoRequest(text="hi", count=2)):
                pass


async def test_a_wrong_token_is_refused(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = start_service({"FORGELINE_INTERNAL_TOKEN": TOKEN})
    monkeypatch.setenv("FORGELINE_INTERNAL_TOKEN", "g" * 24)

    async with make_channel(echo.target) as channel:
        with pytest.raises(errors.Unauthenticated):
            await say(channel)(EchoRequest(text="hi"))


async def test_a_kit_channel_with_the_token_is_answered(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = start_service({"FORGELINE_INTERNAL_TOKEN": TOKEN})
    monkeypatch.setenv("FORGELINE_INTERNAL_TOKEN", TOKEN)

    async with make_channel(echo.target) as channel:
        reply = await say(channel)(EchoRequest(text="hi"))
        streamed = [r async for r in count(channel)(EchoRequest(text="hi", count=2))]

    assert isinstance(reply, EchoReply)
    assert reply.text == "hi"
    assert len(streamed) == 2


async def test_health_checks_need_no_token(start_service: StartService) -> None:
    echo = start_service({"FORGELINE_INTERNAL_TOKEN": TOKEN})

    async with grpc.aio.insecure_channel(echo.target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )

    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_token_too_short_to_be_a_secret_stops_the_service(
    start_service: StartService,
) -> None:
    echo = start_service({"FORGELINE_INTERNAL_TOKEN": "short"}, wait=False)

    assert echo.wait(30) == 2
    assert "FORGELINE_INTERNAL_TOKEN is 5 characters long" in echo.output
