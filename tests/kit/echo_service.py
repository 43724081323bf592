"""A small service built on the kit, which the kit's tests run as a real process.

Its contract, ``forgeline.test.v1.Echo``, is defined here in code (not in proto/, which holds the
product's contracts) and added to the default descriptor pool, so server reflection serves it like
any generated service.

- ``Say``: echoes ``text``; with ``fail_with`` raises that `forgeline_kit.errors` class (or an
  unexpected exception for ``"crash"``); with ``hold`` waits until the process gets SIGUSR1.
- ``Count``: streams ``count`` replies, then raises ``fail_with`` if set.
- ``Flaky``: answers UNAVAILABLE to the first ``fail_times`` attempts for a given ``text``.

Run as a script: ``python tests/kit/echo_service.py`` (settings from FORGELINE_ECHO_*).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit import errors
from forgeline_kit.grpc.server import Service, run_grpc_service
from forgeline_kit.settings import RenamedSetting, ServiceSettings

SERVICE_NAME = "forgeline.test.v1.Echo"
FILE_NAME = "forgeline_test/echo.proto"

log = logging.getLogger("echo")


def _register_contract() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE_NAME)
        return pool
    except KeyError:
        pass
    field = descriptor_pb2.FieldDescriptorProto
    contract = descriptor_pb2.FileDescriptorProto(
        name=FILE_NAME, package="forgeline.test.v1", syntax="proto3"
    )
    request = contract.message_type.add(name="EchoRequest")
    for number, (name, kind) in enumerate(
        [
            ("text", field.TYPE_STRING),
            ("fail_with", field.TYPE_STRING),
            ("field", field.TYPE_STRING),
            ("hold", field.TYPE_BOOL),
            ("count", field.TYPE_INT32),
            ("fail_times", field.TYPE_INT32),
        ],
        start=1,
    ):
        request.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    reply = contract.message_type.add(name="EchoReply")
    for number, (name, kind) in enumerate(
        [("text", field.TYPE_STRING), ("index", field.TYPE_INT32), ("attempt", field.TYPE_INT32)],
        start=1,
    ):
        reply.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    service = contract.service.add(name="Echo")
    for method, streaming in [("Say", False), ("Count", True), ("Flaky", False)]:
        service.method.add(
            name=method,
            input_type=".forgeline.test.v1.EchoRequest",
            output_type=".forgeline.test.v1.EchoReply",
            server_streaming=streaming,
        )
    pool.AddSerializedFile(contract.SerializeToString())
    return pool


_POOL = _register_contract()
EchoRequest: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("forgeline.test.v1.EchoRequest")
)
EchoReply: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("forgeline.test.v1.EchoReply")
)


class EchoSettings(ServiceSettings):
    """The kit's common settings plus one of the service's own."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_ECHO_")
    # GREETING's name before it was renamed, still read (tests/kit/test_settings.py).
    renamed_settings = (RenamedSetting("salutation", "greeting"),)

    greeting: str = Field("", description="Put in front of every echoed text.")


def _domain_error(name: str, field: str) -> Exception:
    if name == "crash":
        return RuntimeError("secret internal detail: /srv/echo/state.db is locked")
    error_type: type[errors.ForgelineError] = getattr(errors, name)
    return error_type(f"echo was told to fail with {name}", field=field or None)


class EchoServicer:
    """Handlers of forgeline.test.v1.Echo."""

    def __init__(self, settings: EchoSettings) -> None:
        self._greeting = settings.greeting
        self._released = asyncio.Event()
        self._attempts: collections.Counter[str] = collections.Counter()

    def release_held_calls(self) -> None:
        """Let every held ``Say`` call answer (wired to SIGUSR1)."""
        self._released.set()

    async def say(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.hold:
            log.info("holding a call", extra={"text": request.text})
            await self._released.wait()
        if request.fail_with:
            raise _domain_error(request.fail_with, request.field)
        return EchoReply(text=self._greeting + request.text)

    async def count(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        for index in range(request.count):
            yield EchoReply(text=request.text, index=index)
        if request.fail_with:
            raise _domain_error(request.fail_with, request.field)

    async def flaky(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._attempts[request.text] += 1
        attempt = self._attempts[request.text]
        if attempt <= request.fail_times:
            raise errors.Unavailable(f"attempt {attempt} fails on purpose")
        return EchoReply(text=request.text, attempt=attempt)

    def register(self, server: grpc.aio.Server) -> None:
        def handler(behavior: Any, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
            factory = (
                grpc.unary_stream_rpc_method_handler
                if streaming
                else grpc.unary_unary_rpc_method_handler
            )
            return factory(
                behavior,
                request_deserializer=EchoRequest.FromString,
                response_serializer=EchoReply.SerializeToString,
            )

        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        "Say": handler(self.say, streaming=False),
                        "Count": handler(self.count, streaming=True),
                        "Flaky": handler(self.flaky, streaming=False),
                    },
                )
            ]
        )


async def build(settings: EchoSettings) -> list[Service]:
    """The services of the echo process (async, as a service that opens connections would be)."""
    servicer = EchoServicer(settings)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, servicer.release_held_calls)

    async def stopped() -> None:
        log.info("echo stopped hook ran")

    return [Service(name=SERVICE_NAME, register=servicer.register, on_stopped=stopped)]


if __name__ == "__main__":
    run_grpc_service(EchoSettings, build)
