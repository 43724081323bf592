"""Standard grpc.health.v1 health checking, with a drain that does not wait on health watchers.

grpcio-health-checking's servicer keeps `Watch` streams open after its graceful-shutdown call.
An open stream is an in-flight call, so every watching client (a load balancer, a sidecar) would
hold a draining server until its grace period ran out. This servicer sends NOT_SERVING to its
watchers and then ends their streams, so a drain waits only on real work.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HEALTH_SERVICE_NAME", "HealthServicer", "ServingStatus"]

HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

#: A value of HealthCheckResponse.ServingStatus (protobuf enums are ints).
ServingStatus: TypeAlias = int
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Quoted: grpc's classes are generic in their type stubs only, not at run time.
_Context: TypeAlias = (
    "grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]"
)


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Serving status per service name; ``""`` stands for the whole server.

    Args:
        services: names known from the start, reported NOT_SERVING until `set` says otherwise.
    """

    def __init__(self, services: Iterable[str] = ()) -> None:
        self._status: dict[str, ServingStatus] = dict.fromkeys(["", *services], NOT_SERVING)
        self._version = 0
        self._changed = asyncio.Condition()
        self._draining = False

    @property
    def draining(self) -> bool:
        """Whether `enter_graceful_shutdown` was called."""
        return self._draining

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Host this servicer on `server`."""
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def status(self, service: str = "") -> ServingStatus | None:
        """The status of `service`, or None when it is not known."""
        return self._status.get(service)

    async def Check(  # noqa: N802 (the proto's method name)
        self, request: health_pb2.HealthCheckRequest, context: _Context
    ) -> health_pb2.HealthCheckResponse:
        """Answer with the service's status; NOT_FOUND for a name this server does not host."""
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 (the proto's method name)
        self, request: health_pb2.HealthCheckRequest, context: _Context
    ) -> None:
        """Stream the service's status, then each change; end once a drain was announced."""
        sent: ServingStatus | None = None
        while True:
            # Read the version before writing: a change made while the write is in flight then
            # still wakes the wait below instead of being lost.
            seen = self._version
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._draining:
                return
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._changed_since, seen))

    def _changed_since(self, version: int) -> bool:
        return self._version != version

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set the status of `service` (ignored once draining: a drain is final)."""
        if not self._draining:
            await self._update({service: status})

    async def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING for every service from now on, and end every watch."""
        if not self._draining:
            self._draining = True
            await self._update(dict.fromkeys(self._status, NOT_SERVING))

    async def _update(self, changes: dict[str, ServingStatus]) -> None:
        async with self._changed:
            self._status |= changes
            self._version += 1
            self._changed.notify_all()
