"""Server interceptors: Prometheus metrics, and the mapping of exceptions to gRPC statuses.

Both wrap the handler of each call, whatever its shape: unary or streaming requests and responses,
and streaming responses written either by an async generator or by ``context.write``. Handlers
must be ``async`` (grpc.aio runs plain functions on a thread pool, which the kit does not use).

`GrpcService` installs them in this order: `PrometheusInterceptor` outermost, so it sees the
status code the `ErrorInterceptor` settled on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from forgeline_kit.errors import (
    INTERNAL_MESSAGE,
    ForgelineError,
    grpc_status_for,
    trailing_metadata_for,
)

__all__ = ["ErrorInterceptor", "PrometheusInterceptor", "ServerMetrics", "server_metrics"]

log = logging.getLogger(__name__)

# The interceptors wrap every method, whatever its message types. Quoted: grpc's classes are
# generic in their type stubs only, not at run time.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]"

# Latency buckets from 1 ms (a registry lookup) to 10 min (a conversion that reports progress).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600,
)  # fmt: skip


class ServerMetrics:
    """The gRPC server metrics, named as go-grpc-prometheus names them so dashboards carry over."""

    def __init__(self, collectors: CollectorRegistry) -> None:
        call = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", call, registry=collectors
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*call, "grpc_code"],
            registry=collectors,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, by status code.",
            [*call, "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=collectors,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight_requests", "RPCs running on the server now.", call,
            registry=collectors,
        )  # fmt: skip
        self.messages_sent = Counter(
            "grpc_server_msg_sent_total", "Response messages sent.", call, registry=collectors
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ServerMetrics] = weakref.WeakKeyDictionary()


def server_metrics(collectors: CollectorRegistry = REGISTRY) -> ServerMetrics:
    """The gRPC server metrics of `collectors`, created on first use (one set per collectors)."""
    metrics = _METRICS.get(collectors)
    if metrics is None:
        metrics = _METRICS[collectors] = ServerMetrics(collectors)
    return metrics


@dataclass(frozen=True)
class _Rpc:
    kind: str  # unary, client_stream, server_stream or bidi_stream, as go-grpc-prometheus says
    service: str
    method: str
    behavior: Callable[..., Any]

    @property
    def full_method(self) -> str:
        return f"/{self.service}/{self.method}"


_FACTORIES = {
    "unary": ("unary_unary", grpc.unary_unary_rpc_method_handler),
    "client_stream": ("stream_unary", grpc.stream_unary_rpc_method_handler),
    "server_stream": ("unary_stream", grpc.unary_stream_rpc_method_handler),
    "bidi_stream": ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _describe(handler: _Handler, details: grpc.HandlerCallDetails) -> _Rpc:
    kind = {
        (False, False): "unary",
        (True, False): "client_stream",
        (False, True): "server_stream",
        (True, True): "bidi_stream",
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    service, _, method = str(details.method).lstrip("/").rpartition("/")
    return _Rpc(kind, service, method, getattr(handler, _FACTORIES[kind][0]))


def _rebuild(handler: _Handler, rpc: _Rpc, behavior: Callable[..., Any]) -> _Handler:
    factory = _FACTORIES[rpc.kind][1]
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each async handler with `_around` (for results) and `_each` (for streamed items)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: gRPC answers UNIMPLEMENTED itself. Not counted, so that callers
            # cannot grow the metrics' label sets with made-up method names.
            return None
        rpc = _describe(handler, handler_call_details)
        behavior = rpc.behavior
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
                async with self._around(rpc, context):
                    async for response in behavior(request, context):
                        self._sent(rpc)
                        yield response

            return _rebuild(handler, rpc, stream)
        if inspect.iscoroutinefunction(behavior):

            async def call(request: Any, context: _Context) -> Any:
                async with self._around(rpc, context):
                    return await behavior(request, context)

            return _rebuild(handler, rpc, call)
        log.warning(
            "%s has a synchronous handler, which the kit does not instrument; make it async",
            rpc.full_method,
        )
        return handler

    def _around(self, rpc: _Rpc, context: _Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def _sent(self, rpc: _Rpc) -> None:
        """Called for each message a streaming handler yields."""


def _code_set_on(context: _Context) -> grpc.StatusCode | None:
    # None while the handler has set no code: the stubs type ServicerContext.code() as returning
    # a StatusCode, but grpc.aio returns None until a code is set (or the call aborted).
    return context.code()


def _code_after(error: BaseException | None, context: _Context) -> str:
    """The status code a call ended with, as its name (OK, NOT_FOUND, ...)."""
    code: grpc.StatusCode | None
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = _code_set_on(context)
    elif isinstance(error, ForgelineError):
        code = error.code
    elif isinstance(error, asyncio.CancelledError | GeneratorExit):
        # GeneratorExit: the client went away while a streaming handler was suspended.
        code = grpc.StatusCode.CANCELLED
    else:
        # What grpc.aio itself answers for an exception nobody mapped.
        code = grpc.StatusCode.UNKNOWN
    if code is None:
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    return str(code.name)


class PrometheusInterceptor(_WrappingInterceptor):
    """Counts calls, their status codes, latency, in-flight calls and streamed messages (those
    an async-generator handler yields; ``context.write`` calls are not seen by interceptors)."""

    def __init__(self, collectors: CollectorRegistry = REGISTRY) -> None:
        self._metrics = server_metrics(collectors)

    @asynccontextmanager
    async def _around(self, rpc: _Rpc, context: _Context) -> AsyncIterator[None]:
        labels = (rpc.kind, rpc.service, rpc.method)
        self._metrics.started.labels(*labels).inc()
        in_flight = self._metrics.in_flight.labels(*labels)
        in_flight.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            in_flight.dec()
            code = _code_after(error, context)
            self._metrics.handled.labels(*labels, code).inc()
            self._metrics.handling_seconds.labels(*labels, code).observe(
                time.perf_counter() - started
            )

    def _sent(self, rpc: _Rpc) -> None:
        self._metrics.messages_sent.labels(rpc.kind, rpc.service, rpc.method).inc()


class ErrorInterceptor(_WrappingInterceptor):
    """Ends a call that raised with the status its exception maps to.

    A `ForgelineError` keeps its code, its message as the details and its field in the trailing
    metadata. Any other exception is logged here with its traceback and reaches the client as
    INTERNAL with a generic message: tracebacks and exception texts never leave the server.
    """

    @asynccontextmanager
    async def _around(self, rpc: _Rpc, context: _Context) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise  # the handler ended the call itself with context.abort
        except ForgelineError as exc:
            log.info(
                "%s failed: %s",
                rpc.full_method,
                exc.message,
                extra={"grpc_method": rpc.full_method, "grpc_code": exc.code.name},
            )
            code, details = grpc_status_for(exc)
            await context.abort(code, details, trailing_metadata=trailing_metadata_for(exc))
        except Exception:
            log.exception(
                "%s failed unexpectedly",
                rpc.full_method,
                extra={"grpc_method": rpc.full_method, "grpc_code": "INTERNAL"},
            )
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
