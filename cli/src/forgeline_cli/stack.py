"""The embedded default: the four services as local processes, on one state directory.

`forgeline demo` and `forgeline up` start it; tests start it too, and stop or restart single
services to prove that a job survives. Each service runs exactly as in its container
(``python -m forgeline_<service>``, configured by its environment variables), on loopback ports
chosen at start, with filesystem storage and llama-server as the inference backend. Readiness is a
real signal: gRPC health checking (grpc.health.v1) for the gRPC services and ``/health`` for the
gateway, polled against a deadline while the process is alive.

One stack owns its state directory (a second one there refuses to start, naming the first), and
while its services run it records where they listen in ``stack.json`` there, which the CLI reads
to find a running stack without flags (:mod:`forgeline_cli.stack_record`). Every service dies with
the process that started it, even one killed with SIGKILL (the kit's ``die_with_parent``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Final

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forgeline_cli.console import EXIT_FAILED
from forgeline_cli.stack_record import StackRecord
from forgeline_kit.llamacpp.server import free_port
from forgeline_kit.sqlite import sqlite_url
from forgeline_kit.state_lock import StateDirInUseError, StateDirLock, hold_state_dir
from forgeline_kit.subprocesses import die_with_parent, offline_env

__all__ = [
    "EXIT_INTERRUPTED",
    "SERVICES",
    "Interrupted",
    "LocalStack",
    "ServiceProcess",
    "StackError",
    "run_on",
    "signals_interrupt",
]

#: Start order: each service only needs those before it.
SERVICES: Final = ("registry", "trainer", "converter", "gateway")
START_TIMEOUT_SECONDS: Final = 120.0
STOP_TIMEOUT_SECONDS: Final = 30.0
#: Starts of one service whose freshly picked port another process took first.
PORT_ATTEMPTS: Final = 3
# What a service logs when its port is taken (the kit's gRPC and metrics listeners, uvicorn).
_PORT_IN_USE: Final = re.compile(r"address already in use|port is in use", re.IGNORECASE)
# What the kit's metrics listener logs when its port is the taken one (forgeline_kit.metrics).
_METRICS_PORT_IN_USE: Final = re.compile(r"cannot serve /metrics on")


def _true(value: str) -> bool:
    """A boolean setting's value as pydantic reads it."""
    return value.strip().lower() in ("1", "true", "t", "yes", "y", "on")


class StackError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


@dataclass
class ServiceProcess:
    """One service process: its ports, log file and environment."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
            die_with_parent([sys.executable, "-m", f"forgeline_{self.name}"]),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (the service drains and exits) or SIGKILL (a crash), then wait."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def use_ports(self, port: int, metrics_port: int) -> None:
        """Listen on `port` (gRPC, or HTTP for the gateway's API) and serve /metrics on
        `metrics_port`, through the service's own settings variables."""
        prefix = f"FORGELINE_{self.name.upper()}_"
        api = "HTTP" if self.name == "gateway" else "GRPC"
        self.env[f"{prefix}{api}_PORT"] = str(port)
        self.env[f"{prefix}METRICS_PORT"] = str(metrics_port)
        self.port, self.metrics_port = port, metrics_port

    def log_size(self) -> int:
        """Bytes in the log now (where the next start's lines will begin)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        """The log from `offset` on."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ready(self) -> bool:
        if self.name == "gateway":
            try:
                return httpx.get(f"http://{self.target}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class LocalStack:
    """The four services on `state_dir`. Use as a context manager, or `start` / `stop`."""

    state_dir: Path
    auth_required: bool = False
    gateway_port: int = 0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    _ownership: StateDirLock | None = None

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        base = offline_env(self.state_dir / "hf-home")
        base |= {"PYTHONUNBUFFERED": "1", **self.extra_env}
        ports = {name: free_port() for name in SERVICES}
        if self.gateway_port:
            ports["gateway"] = self.gateway_port
        metrics = {name: free_port() for name in SERVICES}
        registry = f"127.0.0.1:{ports['registry']}"
        state = self.state_dir
        settings: dict[str, dict[str, str]] = {
            "registry": {
                "FORGELINE_REGISTRY_STORAGE": "fs",
                "FORGELINE_REGISTRY_FS_ROOT": str(state / "registry"),
            },
            # The services share the registry's host and its filesystem store: blobs move as
            # local files (compose and Kubernetes leave REGISTRY_LOCAL_FILES off).
            "trainer": {
                "FORGELINE_TRAINER_REGISTRY_TARGET": registry,
                "FORGELINE_TRAINER_REGISTRY_LOCAL_FILES": "true",
                "FORGELINE_TRAINER_STATE_DIR": str(state / "trainer"),
            },
            "converter": {
                "FORGELINE_CONVERTER_REGISTRY_TARGET": registry,
                "FORGELINE_CONVERTER_REGISTRY_LOCAL_FILES": "true",
                "FORGELINE_CONVERTER_WORK_DIR": str(state / "converter" / "work"),
                "FORGELINE_CONVERTER_DATABASE_URL": sqlite_url(
                    state / "converter" / "state.sqlite3"
                ),
            },
            "gateway": {
                "FORGELINE_GATEWAY_DATABASE_URL": sqlite_url(state / "gateway" / "gateway.sqlite3"),
                "FORGELINE_GATEWAY_MODEL_CACHE": str(state / "gateway" / "models"),
                "FORGELINE_GATEWAY_HUB_CACHE": str(state / "gateway" / "hub"),
                "FORGELINE_GATEWAY_AUTH_REQUIRED": str(self.auth_required).lower(),
                "FORGELINE_GATEWAY_REGISTRY_TARGET": registry,
                "FORGELINE_GATEWAY_REGISTRY_LOCAL_FILES": "true",
                "FORGELINE_GATEWAY_TRAINER_TARGET": f"127.0.0.1:{ports['trainer']}",
                "FORGELINE_GATEWAY_CONVERTER_TARGET": f"127.0.0.1:{ports['converter']}",
            },
        }
        for name in SERVICES:
            prefix = f"FORGELINE_{name.upper()}_"
            env = {k: v for k, v in base.items() if not k.startswith(prefix)}
            env |= {f"{prefix}LOG_FORMAT": "json", **settings[name]}
            # The caller's own settings of this service (extra_env) win over the stack's.
            env |= {k: v for k, v in self.extra_env.items() if k.startswith(prefix)}
            if name == "gateway" and _true(env.get(f"{prefix}HUB_IMPORTS", "")):
                # The gateway imports hf:/modelscope: base models itself: its hub client must
                # reach the hub, with the operator's token for gated repositories.
                env.pop("HF_HUB_OFFLINE", None)
                env.pop("TRANSFORMERS_OFFLINE", None)
                token = self.extra_env.get("HF_TOKEN") or os.environ.get("HF_TOKEN")
                if token:
                    env["HF_TOKEN"] = token
            service = ServiceProcess(
                name=name,
                env=env,
                log_path=self.state_dir / "logs" / f"{name}.log",
                port=0,
                metrics_port=0,
            )
            service.use_ports(ports[name], metrics[name])
            self.services[name] = service

    @property
    def gateway_url(self) -> str:
        return f"http://{self.services['gateway'].target}"

    @property
    def registry_target(self) -> str:
        return self.services["registry"].target

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *names: str) -> None:
        """Start the named services (all by default) in order, each ready before the next.

        Ports are picked free when the stack is made, so another process may take one before the
        service binds it; a service that exits at start because its port is in use gets new
        ports (and the services not yet started the new address) and is started again.

        Raises:
            StackError: a service did not start, or another stack owns the state directory.
        """
        if self._ownership is None:
            try:
                self._ownership = hold_state_dir(self.state_dir, "forgeline up")
            except StateDirInUseError as error:
                raise StackError(str(error)) from None
        for name in names or SERVICES:
            for attempt in range(PORT_ATTEMPTS):
                service = self.services[name]
                log_start = service.log_size()
                service.start()
                try:
                    self.wait_ready(name)
                    break
                except StackError:
                    log = service.log_since(log_start)
                    lost_port = _PORT_IN_USE.search(log)
                    metrics_only = _METRICS_PORT_IN_USE.search(log) is not None
                    if (
                        not lost_port
                        or attempt == PORT_ATTEMPTS - 1
                        or not self._repick(name, metrics_only=metrics_only)
                    ):
                        raise
        self._record()

    def _repick(self, name: str, *, metrics_only: bool = False) -> bool:
        """New free ports for `name`, written into the environment of every service that is not
        running; False when a running service already holds the old address (it cannot learn
        the new one) or the port was chosen by the caller. With `metrics_only` (the service
        lost its metrics port) only that port is replaced, which nobody else dials."""
        service = self.services[name]
        if metrics_only:
            service.use_ports(service.port, free_port())
            return True
        if name == "gateway" and self.gateway_port:
            return False
        old_target = service.target
        if any(
            other.alive() and old_target in other.env.values()
            for other in self.services.values()
            if other is not service
        ):
            return False
        service.use_ports(free_port(), free_port())
        for other in self.services.values():
            for key, value in other.env.items():
                if value == old_target:
                    other.env[key] = service.target
        return True

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not service.alive():
                raise StackError(f"the {name} service exited at start:\n{service.log_tail()}")
            if service.ready():
                return
            time.sleep(0.2)
        raise StackError(
            f"the {name} service was not ready in {timeout:.0f} s:\n{service.log_tail()}"
        )

    def stop(self, *names: str, kill: bool = False) -> None:
        """Stop the named services (all by default), the last started first; with all of them
        stopped the state directory is free for another stack."""
        for name in reversed(names or SERVICES):
            self.services[name].stop(kill=kill)
        self._record()
        idle = not any(service.alive() for service in self.services.values())
        if idle and self._ownership is not None:
            self._ownership.release()
            self._ownership = None

    def _record(self) -> None:
        """Rewrite ``stack.json`` for the services running now (none: no file)."""
        running = {name: s for name, s in self.services.items() if s.alive()}
        if not running:
            StackRecord.remove(self.state_dir)
            return
        StackRecord(
            pid=os.getpid(),
            state_dir=str(self.state_dir),
            gateway=self.gateway_url if "gateway" in running else None,
            targets={name: s.target for name, s in running.items() if name != "gateway"},
            metrics={name: s.metrics_url for name, s in running.items()},
        ).write(self.state_dir)

    def restart(self, name: str, *, kill: bool = False) -> None:
        """Stop one service (SIGKILL with `kill`: a crash) and start it again on the same ports
        and state."""
        self.services[name].stop(kill=kill)
        self.services[name].start()
        self.wait_ready(name)
        self._record()

    def env_summary(self) -> dict[str, str]:
        """Where each service listens, for people."""
        summary = {"gateway": self.gateway_url}
        for name in SERVICES:
            service = self.services[name]
            if name != "gateway":
                summary[f"{name} (gRPC)"] = service.target
            summary[f"{name} /metrics"] = service.metrics_url
        return summary


class Interrupted(Exception):  # noqa: N818 (what happened, as KeyboardInterrupt)
    """SIGTERM or SIGHUP reached the command (SIGINT arrives as KeyboardInterrupt)."""


#: The shell's exit status for a command ended by a signal it handled.
EXIT_INTERRUPTED: Final = 130


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (a closed terminal) into :class:`Interrupted` in the main thread,
    so a stop arriving at any moment, start-up included, runs the same clean-up as Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_on(stack: LocalStack, body: Callable[[LocalStack], int]) -> int:
    """Run ``body`` (a command that starts what it needs of ``stack``) and return its exit code;
    a service that did not start is one ``FAILED:`` line and exit 1, a stop (Ctrl-C, SIGTERM,
    SIGHUP) that ``body`` does not handle itself exits 130. Every service is stopped afterwards,
    however ``body`` ends; were this process killed outright, they would die with it."""
    with signals_interrupt():
        try:
            return body(stack)
        except StackError as error:
            print(f"FAILED: {error}")
            return EXIT_FAILED
        except (KeyboardInterrupt, Interrupted):
            print("Stopped: stopping the services started so far ...", flush=True)
            return EXIT_INTERRUPTED
        finally:
            stack.stop()
