"""A contract fake of the Docker Engine API, for tests only: containers of the vLLM image.

It follows the Docker Engine API reference, version 1.45 (the version docker-py 7.2 speaks by
default; https://docs.docker.com/reference/api/engine/version/v1.45/), for the endpoints the
``docker`` SDK calls to run a container, and only those; every path may carry the ``/v1.NN``
version prefix:

* ``GET|HEAD /_ping``: ``OK`` (text/plain) with the ``Api-Version`` header.
* ``GET /version``: ``{"Version", "ApiVersion", "MinAPIVersion", "Os", "Arch", ...}``.
* ``POST /containers/create?name=NAME`` with the ContainerConfig (``Image``, ``Cmd``, ``Env``,
  ``Labels``, ``ExposedPorts``, ``HostConfig`` with ``PortBindings``, ``Mounts``,
  ``DeviceRequests``, ``IpcMode``, ``NetworkMode``): 201 ``{"Id", "Warnings"}``; 404 ``No such
  image: IMAGE`` for an image the engine does not have; 409 for a name in use.
* ``POST /containers/{id}/start``: 204; 304 if already running; 404 for an unknown container.
* ``GET /containers/{id}/json``: the inspect document (``Id``, ``Name`` as ``/NAME``,
  ``State.Status``/``Running``/``ExitCode``, ``Config``, ``HostConfig``,
  ``NetworkSettings.Ports`` as ``{"8000/tcp": [{"HostIp", "HostPort"}]}``, ``Mounts``).
* ``POST /containers/{id}/stop?t=SECONDS``: 204; 304 if not running.
* ``DELETE /containers/{id}?force=BOOL``: 204; 409 for a running container without ``force``.
* ``GET /containers/json?all=BOOL&filters=JSON``: the running containers (every one with
  ``all``), filtered by ``{"label": ["KEY" | "KEY=VALUE", ...]}``.
* Errors are ``{"message": "..."}``, as the reference's ErrorResponse.

Starting a container launches the vLLM contract fake (`fakes.vllm.FakeVllm`) on a loopback port,
serving the model named by ``--served-model-name`` in the container's command, plus vLLM's
``GET /health`` (200 once the server is up; the first `unhealthy_polls` answer 503 as a loading
engine would). The port is reported as the host port bound to every published container port.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .server import FakeServer
from .vllm import FakeVllm

API_VERSION = "1.45"
_VERSION_PREFIX = re.compile(r"^/v1\.[0-9]+(?=/)")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


@dataclass
class FakeContainer:
    """One container: what it was created with and, while running, its fake vLLM."""

    id: str
    name: str
    body: dict[str, Any]
    created: str
    status: str = "created"
    exit_code: int = 0
    vllm: FakeVllm | None = None
    server: FakeServer | None = None
    health_polls: int = 0
    stops: int = field(default=0)

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.body.get("Labels") or {}
        return labels

    def argument(self, flag: str) -> str | None:
        command: list[str] = self.body.get("Cmd") or []
        if flag in command[:-1]:
            return command[command.index(flag) + 1]
        return None

    def ports(self) -> dict[str, list[dict[str, str]] | None]:
        bindings: dict[str, Any] = (self.body.get("HostConfig") or {}).get("PortBindings") or {}
        exposed = set(bindings) | set(self.body.get("ExposedPorts") or {})
        if self.status != "running" or self.server is None:
            return dict.fromkeys(exposed)
        return {
            port: [{"HostIp": "127.0.0.1", "HostPort": str(self.server.port)}]
            if port in bindings
            else None
            for port in exposed
        }


class _StripVersion:
    """Routes ``/v1.45/containers/...`` as ``/containers/...``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _VERSION_PREFIX.sub("", scope["path"])
            scope = dict(scope, path=path, raw_path=path.encode())
        await self.app(scope, receive, send)


class FakeDockerEngine:
    """State and routes of one fake Docker Engine.

    Attributes:
        images: images the engine has (creating a container of another one is a 404).
        creates: every ``POST /containers/create`` body, in order, with its ``name``.
        unhealthy_polls: how many ``/health`` polls a new vLLM answers 503 before 200.
        exit_on_start: containers started exit at once with this code (a crashing vLLM).
    """

    def __init__(self, images: set[str]) -> None:
        self.images = set(images)
        self.containers: dict[str, FakeContainer] = {}
        self.creates: list[dict[str, Any]] = []
        self.unhealthy_polls = 2
        self.exit_on_start: int | None = None
        routes = [
            Route("/_ping", self.ping, methods=["GET", "HEAD"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/containers/create", self.create, methods=["POST"]),
            Route("/containers/json", self.list, methods=["GET"]),
            Route("/containers/{id}/start", self.start, methods=["POST"]),
            Route("/containers/{id}/stop", self.stop, methods=["POST"]),
            Route("/containers/{id}/json", self.inspect, methods=["GET"]),
            Route("/containers/{id}", self.delete, methods=["DELETE"]),
        ]
        self.app = _StripVersion(Starlette(routes=routes))

    # --- system

    async def ping(self, request: Request) -> Response:
        headers = {"Api-Version": API_VERSION, "Cache-Control": "no-cache", "OSType": "linux"}
        return PlainTextResponse("OK", headers=headers)

    async def version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "Platform": {"Name": "Forgeline fake Docker Engine"},
                "Version": "27.0.0",
                "ApiVersion": API_VERSION,
                "MinAPIVersion": "1.24",
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": "6.0.0",
                "GoVersion": "go1.22",
                "GitCommit": "fake",
                "BuildTime": "2024-01-01T00:00:00.000000000+00:00",
            },
            headers={"Api-Version": API_VERSION},
        )

    # --- containers

    def _find(self, reference: str) -> FakeContainer | None:
        if reference in self.containers:
            return self.containers[reference]
        for container in self.containers.values():
            if container.name == reference.lstrip("/") or container.id.startswith(reference):
                return container
        return None

    async def create(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        name = request.query_params.get("name") or f"fake_{secrets.token_hex(4)}"
        self.creates.append({"name": name, **body})
        image = body.get("Image", "")
        if image not in self.images:
            return _error(404, f"No such image: {image}")
        for existing in self.containers.values():
            if existing.name == name:
                return _error(
                    409,
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{existing.id}". You have to remove (or rename) that container to be able '
                    "to reuse that name.",
                )
        container = FakeContainer(
            id=secrets.token_hex(32),
            name=name,
            body=body,
            created=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        self.containers[container.id] = container
        return JSONResponse({"Id": container.id, "Warnings": []}, status_code=201)

    async def start(self, request: Request) -> Response:
        container = self._find(request.path_params["id"])
        if container is None:
            return _error(404, f"No such container: {request.path_params['id']}")
        if container.status == "running":
            return Response(status_code=304)
        if self.exit_on_start is not None:
            container.status, container.exit_code = "exited", self.exit_on_start
            return Response(status_code=204)
        served = container.argument("--served-model-name") or container.argument("--model") or ""
        environment = dict(
            item.split("=", 1) for item in container.body.get("Env") or [] if "=" in item
        )
        rank = container.argument("--max-lora-rank")
        # vLLM's flags and variable for LoRA adapters (its "LoRA Adapters" guide).
        container.vllm = FakeVllm(
            served,
            enable_lora="--enable-lora" in (container.body.get("Cmd") or []),
            runtime_lora_updating=_flag(environment.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")),
            max_lora_rank=int(rank) if rank else 16,
        )
        container.vllm.mounts = {
            mount["Target"]: mount["Source"]
            for mount in (container.body.get("HostConfig") or {}).get("Mounts") or []
            if mount.get("Type") == "bind"
        }
        container.health_polls = 0

        async def health(request: Request) -> Response:
            return self._health(container)

        app = Starlette(
            routes=[Route("/health", health, methods=["GET"]), Mount("/", app=container.vllm.app)]
        )
        # Starting waits for the server thread to listen: off the engine's event loop.
        container.server = await asyncio.to_thread(FakeServer(app).start)
        container.status = "running"
        return Response(status_code=204)

    def _health(self, container: FakeContainer) -> Response:
        container.health_polls += 1
        if container.health_polls <= self.unhealthy_polls:
            return Response(status_code=503)
        return Response(status_code=200)

    async def stop(self, request: Request) -> Response:
        container = self._find(request.path_params["id"])
        if container is None:
            return _error(404, f"No such container: {request.path_params['id']}")
        if container.status != "running":
            return Response(status_code=304)
        await self._halt(container)
        return Response(status_code=204)

    async def _halt(self, container: FakeContainer) -> None:
        if container.server is not None:
            await asyncio.to_thread(container.server.stop)
        container.server = None
        container.status, container.exit_code = "exited", 0
        container.stops += 1

    async def delete(self, request: Request) -> Response:
        container = self._find(request.path_params["id"])
        if container is None:
            return _error(404, f"No such container: {request.path_params['id']}")
        if container.status == "running":
            if not _flag(request.query_params.get("force")):
                return _error(
                    409,
                    f'cannot remove container "/{container.name}": container is running: stop '
                    "the container before removing or force remove",
                )
            await self._halt(container)
        del self.containers[container.id]
        return Response(status_code=204)

    async def inspect(self, request: Request) -> Response:
        container = self._find(request.path_params["id"])
        if container is None:
            return _error(404, f"No such container: {request.path_params['id']}")
        body = container.body
        host_config = body.get("HostConfig") or {}
        running = container.status == "running"
        return JSONResponse(
            {
                "Id": container.id,
                "Created": container.created,
                "Path": "vllm",
                "Args": body.get("Cmd") or [],
                "State": {
                    "Status": container.status,
                    "Running": running,
                    "Paused": False,
                    "Restarting": False,
                    "OOMKilled": False,
                    "Dead": False,
                    "Pid": 4242 if running else 0,
                    "ExitCode": container.exit_code,
                    "Error": "",
                },
                "Image": f"sha256:{secrets.token_hex(32)}",
                "Name": f"/{container.name}",
                "RestartCount": 0,
                "HostConfig": host_config,
                "Mounts": [
                    {
                        "Type": mount.get("Type", "volume"),
                        "Name": mount.get("Source", "") if mount.get("Type") == "volume" else "",
                        "Source": mount.get("Source", ""),
                        "Destination": mount.get("Target", ""),
                        "Mode": "",
                        "RW": not mount.get("ReadOnly", False),
                        "Propagation": "",
                    }
                    for mount in host_config.get("Mounts") or []
                ],
                "Config": {
                    "Hostname": container.id[:12],
                    "Image": body.get("Image"),
                    "Cmd": body.get("Cmd"),
                    "Env": body.get("Env") or [],
                    "Labels": container.labels,
                    "ExposedPorts": body.get("ExposedPorts") or {},
                },
                "NetworkSettings": {
                    "Ports": container.ports(),
                    "Networks": {host_config.get("NetworkMode") or "bridge": {}},
                },
            }
        )

    async def list(self, request: Request) -> Response:
        show_all = _flag(request.query_params.get("all"))
        filters: dict[str, list[str]] = json.loads(request.query_params.get("filters") or "{}")
        wanted = filters.get("label", [])
        found = []
        for container in self.containers.values():
            if not show_all and container.status != "running":
                continue
            if not all(_has_label(container.labels, w) for w in wanted):
                continue
            found.append(
                {
                    "Id": container.id,
                    "Names": [f"/{container.name}"],
                    "Image": container.body.get("Image"),
                    "Command": " ".join(container.body.get("Cmd") or []),
                    "Created": 0,
                    "Labels": container.labels,
                    "State": container.status,
                    "Status": "Up" if container.status == "running" else "Exited",
                    "Ports": [
                        {
                            "IP": b["HostIp"],
                            "PrivatePort": int(port.split("/")[0]),
                            "PublicPort": int(b["HostPort"]),
                            "Type": port.split("/")[1],
                        }
                        for port, bindings in container.ports().items()
                        for b in bindings or []
                    ],
                }
            )
        return JSONResponse(found)

    def close(self) -> None:
        """Stop the fake vLLM servers of containers still running."""
        for container in self.containers.values():
            if container.server is not None:
                container.server.stop()
                container.server = None


def _has_label(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)
