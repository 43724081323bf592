"""The one gRPC server bootstrap every Forgeline service runs on.

A service's ``__main__`` is a few lines::

    def build(settings: RegistrySettings) -> list[Service]:
        servicer = RegistryServicer(settings)
        return [Service.of(servicer, registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                           registry_pb2.DESCRIPTOR.services_by_name["RegistryService"])]

    def main() -> None:
        run_grpc_service(RegistrySettings, build)

and gets: settings validated from the environment (exit 2 naming the variable), logging as
configured, grpc.health.v1 health, server reflection, the Prometheus and error interceptors, a
``/metrics`` endpoint, and a graceful shutdown on SIGTERM or SIGINT: health turns NOT_SERVING,
no new call is accepted, calls in flight get up to the grace period to finish, then the process
exits 0. A second signal cancels what is still running at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry

from forgeline_kit.grpc.health import HEALTH_SERVICE_NAME, SERVING, HealthServicer
from forgeline_kit.grpc.interceptors import ErrorInterceptor, PrometheusInterceptor
from forgeline_kit.grpc.internal_token import (
    InternalTokenError,
    InternalTokenInterceptor,
    internal_token,
)
from forgeline_kit.logging import configure_logging
from forgeline_kit.metrics import MetricsServer, MetricsStartError, start_service_metrics
from forgeline_kit.settings import (
    ServiceSettings,
    SettingsError,
    load_settings,
    renamed_variables_in_use,
    settings_help,
)
from forgeline_kit.state_lock import StateDirInUseError

__all__ = ["GrpcService", "Service", "ServiceStartError", "run_grpc_service"]

log = logging.getLogger(__name__)

REFLECTION_SERVICE_NAME: str = reflection.SERVICE_NAME

#: Exit status when the environment is not a valid configuration (as for a command-line error).
EXIT_BAD_SETTINGS = 2
#: Exit status when the service cannot start (a port in use, say).
EXIT_START_FAILED = 1

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    """One gRPC service to host.

    Attributes:
        name: the full service name (``forgeline.registry.v1.RegistryService``), used for its
            health status and listed by reflection.
        register: adds the service's handlers to a server.
        on_draining: awaited when a shutdown begins, before in-flight calls are waited for; a
            service with long-lived streams (event watches) ends them here.
        on_stopped: awaited after the server stopped; close what the service opened.
    """

    name: str
    register: Callable[[grpc.aio.Server], None]
    on_draining: Hook | None = None
    on_stopped: Hook | None = None

    @classmethod
    def of(
        cls,
        servicer: Any,
        add_to_server: Callable[[Any, grpc.aio.Server], None],
        descriptor: Any,
        *,
        on_draining: Hook | None = None,
        on_stopped: Hook | None = None,
    ) -> Service:
        """A service from generated code: the servicer, its ``add_*_to_server`` function and its
        `ServiceDescriptor` (``pb2.DESCRIPTOR.services_by_name["..."]``)."""
        return cls(
            name=descriptor.full_name,
            register=lambda server: add_to_server(servicer, server),
            on_draining=on_draining,
            on_stopped=on_stopped,
        )


class ServiceStartError(Exception):
    """The service could not start; the message says which setting to change."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcService:
    """A grpc.aio server with the kit's standard parts, started and stopped as one.

    Args:
        settings: where to listen, and the shutdown grace period.
        services: the services to host.
        collectors: the Prometheus collectors for the gRPC metrics and ``/metrics``.
        interceptors: extra server interceptors, run inside the kit's (metrics, errors and,
            with FORGELINE_INTERNAL_TOKEN set, the internal token check).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        services: Sequence[Service],
        *,
        collectors: CollectorRegistry = REGISTRY,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        self.services = tuple(services)
        self.health = HealthServicer(service.name for service in self.services)
        self._collectors = collectors
        token = internal_token()
        checks = (InternalTokenInterceptor(token),) if token else ()
        self._interceptors = (
            PrometheusInterceptor(collectors),
            ErrorInterceptor(),
            *checks,
            *interceptors,
        )
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: The ports actually bound, known once `start` returned (useful with port 0).
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC server (after `start`)."""
        return _address(self.settings.grpc_host, self.grpc_port or 0)

    async def start(self) -> None:
        """Bind both ports, start serving, and report every hosted service SERVING.

        Raises:
            ServiceStartError: a port cannot be bound.
        """
        settings = type(self.settings)
        # gRPC sets SO_REUSEPORT by default: a second instance started by mistake would then
        # share the port silently instead of failing at start.
        server = grpc.aio.server(
            interceptors=self._interceptors, options=[("grpc.so_reuseport", 0)]
        )
        for service in self.services:
            service.register(server)
        self.health.add_to_server(server)
        reflection.enable_server_reflection(
            [*(s.name for s in self.services), HEALTH_SERVICE_NAME, REFLECTION_SERVICE_NAME],
            server,
        )
        address = _address(self.settings.grpc_host, self.settings.grpc_port)
        try:
            self.grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServiceStartError(
                f"cannot listen for gRPC on {address} (set by {settings.env_var('grpc_host')} and "
                f"{settings.env_var('grpc_port')}): the port is in use or the address is not "
                f"one of this host's ({exc})"
            ) from None
        try:
            self._metrics = start_service_metrics(self.settings, self._collectors)
        except MetricsStartError as exc:
            raise ServiceStartError(str(exc)) from None
        self.metrics_port = self._metrics.port
        await server.start()
        self._server = server
        for name in ("", *(s.name for s in self.services)):
            await self.health.set(name, SERVING)
        log.info(
            "serving %s on %s, metrics on %s",
            ", ".join(s.name for s in self.services) or "no services",
            self.grpc_address,
            self._metrics.url,
            extra={
                "grpc_address": self.grpc_address,
                "grpc_port": self.grpc_port,
                "metrics_url": self._metrics.url,
                "metrics_port": self.metrics_port,
                "services": [s.name for s in self.services],
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, no new calls, in-flight calls get `grace` seconds
        (the settings' grace period by default), then whatever still runs is cancelled.

        Calling it again while a drain runs waits for that drain; ``grace=0`` cuts it short.
        """
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._drain(grace))
        elif grace == 0 and self._server is not None:
            await self._server.stop(None)
        await asyncio.shield(self._stopping)

    async def _drain(self, grace: float | None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        started = time.monotonic()
        log.info("draining: in-flight calls have %.1f s to finish", grace, extra={"grace": grace})
        await self.health.enter_graceful_shutdown()
        await self._run_hooks("on_draining")
        if self._server is not None:
            await self._server.stop(grace)
        await self._run_hooks("on_stopped")
        if self._metrics is not None:
            self._metrics.close()
        log.info(
            "stopped after %.2f s",
            time.monotonic() - started,
            extra={"drain_seconds": round(time.monotonic() - started, 3)},
        )

    async def _run_hooks(self, which: str) -> None:
        for service in self.services:
            hook: Hook | None = getattr(service, which)
            if hook is None:
                continue
            try:
                await hook()
            except Exception:
                # One service's failing cleanup must not keep the others from theirs.
                log.exception("%s of %s failed", which, service.name)

    async def serve(self) -> None:
        """Start, run until SIGTERM or SIGINT, then drain and stop (a second signal cuts the
        drain short)."""
        await self.start()
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if not signalled.is_set():
                log.info("%s received, shutting down", name, extra={"signal": name})
                signalled.set()
            else:
                log.warning("%s received again: cancelling in-flight calls", name)
                task = loop.create_task(self.stop(grace=0))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await signalled.wait()
            await self.stop()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)


S = TypeVar("S", bound=ServiceSettings)

Build = Callable[[S], Sequence[Service] | Awaitable[Sequence[Service]]]


def run_grpc_service(settings_cls: type[S], build: Build[S]) -> NoReturn:
    """Run a service until it is told to stop, then exit the process.

    Reads `settings_cls` from the environment, configures logging (then warns of each renamed
    variable still set, `renamed_variables_in_use`), calls `build(settings)` (which
    may be async) for the services to host, and serves them with `GrpcService`. The command line
    takes only ``--help``, which lists the variables and exits:
    an operator who tries ``--grpc-port 7000`` is told where settings go instead of getting a
    server on the default port.

    Exit status: 0 after a graceful shutdown or ``--help``, 2 for invalid settings or arguments
    (each named on stderr), 1 when the service cannot start.
    """
    program = _program(settings_cls)
    args = sys.argv[1:]
    if args in (["--help"], ["-h"]):
        print(f"usage: {program}\n\nSettings are environment variables:\n")
        print(settings_help(settings_cls))
        sys.exit(0)
    if args:
        print(
            f"{program}: unexpected argument {args[0]!r}: settings come from "
            f"{settings_cls.env_prefix()}* environment variables ({program} --help lists them)",
            file=sys.stderr,
        )
        sys.exit(EXIT_BAD_SETTINGS)
    try:
        settings = load_settings(settings_cls)
        internal_token()
    except (SettingsError, InternalTokenError) as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    configure_logging(settings.log_level, settings.log_format)
    for warning in renamed_variables_in_use(settings_cls):
        log.warning("%s", warning)
    try:
        asyncio.run(_serve(settings, build))
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    except (ServiceStartError, StateDirInUseError) as exc:
        log.error("%s", exc)
        sys.exit(EXIT_START_FAILED)
    sys.exit(0)


async def _serve(settings: S, build: Build[S]) -> None:
    built = build(settings)
    services = await built if inspect.isawaitable(built) else built
    await GrpcService(settings, services).serve()


def _program(settings_cls: type[ServiceSettings]) -> str:
    """The service's name for messages: FORGELINE_REGISTRY_ gives forgeline-registry."""
    return settings_cls.env_prefix().strip("_").lower().replace("_", "-") or "forgeline"
