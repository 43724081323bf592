"""Channels to Forgeline services: default deadlines, retry on UNAVAILABLE, domain errors.

::

    async with make_channel("trainer:50051") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            job = await stub.GetJob(request)
        except NotFound as exc:  # a forgeline_kit.errors type, not grpc.aio.AioRpcError
            ...

(The registry is never called this way: its callers use ``forgeline_registry_client``'s
``RegistryClient``, which holds such a channel.)

Why gRPC's own retry policy (the ``retryPolicy`` of the channel's service config, gRFC A6)
rather than a retry loop around calls:

- it runs in gRPC core below every interceptor and knows what a loop cannot: whether the server
  has started answering (a call is retried only before response headers arrive, so a server that
  streamed half an answer is never asked twice) and whether the request left the client at all;
- it covers streaming calls up to their first response, which a loop around ``await`` cannot;
- backoff is exponential with jitter, and ``retryThrottling`` stops retries for the whole channel
  once most calls fail, so a service that is down is not hit by a retry storm when it returns.

``waitForReady`` complements it for a server that is not listening yet (services start in any
order): a call waits for the connection, up to its deadline, instead of failing at once.
Reconnection backoff is capped at a few seconds so a service that comes back is used promptly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from forgeline_kit.errors import error_from_rpc_error
from forgeline_kit.grpc.internal_token import call_metadata, internal_token

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "RetryPolicy",
    "ServiceConfig",
    "domain_error_interceptors",
    "make_channel",
]

#: Deadline of a call whose response is one message, when the caller sets none.
DEFAULT_TIMEOUT_SECONDS = 30.0


def _duration(seconds: float) -> str:
    # Protobuf's JSON form of google.protobuf.Duration, as the service config expects it.
    return f"{seconds:.3f}s"


class _GrpcJson(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class RetryPolicy(_GrpcJson):
    """gRPC's ``retryPolicy``: which codes are retried, how often, and the backoff between.

    The defaults try a call up to 5 times (gRPC's own ceiling) with backoffs drawn up to 0.1,
    0.2, 0.4 and 0.8 s: enough to ride out a restart or a dropped connection, short enough that
    a caller learns of a real outage within seconds.
    """

    max_attempts: int = Field(5, ge=2, le=5)
    initial_backoff: float = Field(0.1, gt=0)
    max_backoff: float = Field(2.0, gt=0)
    backoff_multiplier: float = Field(2.0, gt=0)
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)

    @field_serializer("initial_backoff", "max_backoff")
    def _as_duration(self, seconds: float) -> str:
        return _duration(seconds)


class RetryThrottling(_GrpcJson):
    """Channel-wide retry budget: retries stop while fewer than half the tokens are left."""

    max_tokens: int = Field(10, gt=0)
    token_ratio: float = Field(0.1, gt=0)


class _MethodName(_GrpcJson):
    service: str | None = None
    method: str | None = None


class MethodConfig(_GrpcJson):
    """Settings for the methods named (no name fields: every method of every service)."""

    name: tuple[_MethodName, ...] = (_MethodName(),)
    wait_for_ready: bool | None = None
    retry_policy: RetryPolicy | None = None


class ServiceConfig(_GrpcJson):
    """The service config a channel is created with (the parts Forgeline uses)."""

    method_config: tuple[MethodConfig, ...] = ()
    retry_throttling: RetryThrottling | None = None

    def to_json(self) -> str:
        """The JSON gRPC reads from the ``grpc.service_config`` channel argument."""
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True))


_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_Requests: TypeAlias = AsyncIterable[_TRequest] | Iterable[_TRequest]


class _DomainErrors:
    """What the four interceptors below share. gRPC files a client interceptor under the first
    of the four interceptor kinds it is an instance of, hence one class per kind."""

    def __init__(self, default_timeout: float | None) -> None:
        self._default_timeout = default_timeout
        # Read once per channel: every call of the channel carries the same internal token.
        self._token_metadata = call_metadata(internal_token())

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is None and self._default_timeout is not None:
            details = grpc.aio.ClientCallDetails(
                method=details.method,
                timeout=self._default_timeout,
                metadata=details.metadata,
                credentials=details.credentials,
                wait_for_ready=details.wait_for_ready,
            )
        return self._with_token(details)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if not self._token_metadata:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._token_metadata)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    @staticmethod
    async def _response(call: Awaitable[_TResponse]) -> _TResponse:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from exc

    @staticmethod
    async def _responses(call: AsyncIterable[_TResponse]) -> AsyncIterator[_TResponse]:
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from exc


class _UnaryUnary(_DomainErrors, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _TRequest],
            Awaitable[grpc.aio.UnaryUnaryCall[_TRequest, _TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _TRequest,
    ) -> _TResponse:
        call = await continuation(self._with_deadline(client_call_details), request)
        return await self._response(call)


class _StreamUnary(_DomainErrors, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Requests[_TRequest]],
            Awaitable[grpc.aio.StreamUnaryCall[_TRequest, _TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: _Requests[_TRequest],
    ) -> _TResponse:
        call = await continuation(self._with_deadline(client_call_details), request_iterator)
        return await self._response(call)


class _UnaryStream(_DomainErrors, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _TRequest],
            Awaitable[grpc.aio.UnaryStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _TRequest,
    ) -> AsyncIterator[_TResponse]:
        return self._responses(await continuation(self._with_token(client_call_details), request))


class _StreamStream(_DomainErrors, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Requests[_TRequest]],
            Awaitable[grpc.aio.StreamStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: _Requests[_TRequest],
    ) -> AsyncIterator[_TResponse]:
        details = self._with_token(client_call_details)
        return self._responses(await continuation(details, request_iterator))


def domain_error_interceptors(
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that give calls with one response a default deadline, and raise a
    failed call's status as the matching `forgeline_kit.errors.ForgelineError` (chained to the
    `AioRpcError`), for each kind of call.

    Calls with streamed responses (watches, progress) get no default deadline: they may rightly
    run for hours. Pass ``timeout=`` to bound one.
    """
    return [
        kind(default_timeout) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]


def default_service_config(
    retry: RetryPolicy | None = None, *, wait_for_ready: bool = True
) -> ServiceConfig:
    """Retry on UNAVAILABLE (or as `retry` says) and wait for a connection, for every method."""
    return ServiceConfig(
        method_config=(
            MethodConfig(wait_for_ready=wait_for_ready, retry_policy=retry or RetryPolicy()),
        ),
        retry_throttling=RetryThrottling(),
    )


def make_channel(
    target: str,
    *,
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    retry: RetryPolicy | None = None,
    wait_for_ready: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` (``host:port``, or any gRPC target such as ``dns:///``).

    Args:
        default_timeout: deadline in seconds of calls with one response that set none; None
            for no default deadline.
        retry: the retry policy (default: `RetryPolicy()`, on UNAVAILABLE only).
        wait_for_ready: wait up to the deadline for a connection rather than fail at once while
            the server is unreachable; a command-line tool may prefer to fail fast.
        credentials: TLS credentials; plaintext when None (the internal network's default).
        interceptors: more client interceptors, run inside the kit's.
        options: more channel arguments; they override the kit's.
    """
    config = default_service_config(retry, wait_for_ready=wait_for_ready)
    arguments = dict(
        [
            ("grpc.service_config", config.to_json()),
            ("grpc.enable_retries", 1),
            # A restarted service is reconnected to within ~2 s, not after gRPC's 2-minute cap.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            *options,
        ]
    )
    chain = [*domain_error_interceptors(default_timeout), *interceptors]
    if credentials is None:
        return grpc.aio.insecure_channel(
            target, options=list(arguments.items()), interceptors=chain
        )
    return grpc.aio.secure_channel(
        target, credentials, options=list(arguments.items()), interceptors=chain
    )
