"""vLLM containers the gateway starts through the Docker Engine API (the ``docker`` SDK).

A ``registry_model`` deployment on vLLM gets one container of the vLLM image
(``FORGELINE_GATEWAY_VLLM_IMAGE``) per deployment:

* the model is the version's directory in the gateway's model cache, which the container mounts
  read-only at ``/models`` (``FORGELINE_GATEWAY_VLLM_MODEL_MOUNT``: the Docker volume or host
  directory holding the cache as the Docker host sees it; by default the cache's own absolute
  path, right for a gateway running on the Docker host);
* the GPUs are requested as ``docker run --gpus N`` does (a device request with capabilities
  ``[["gpu"]]``, N = the tensor-parallel size), with the host's IPC namespace as vLLM's Docker
  guide asks for (PyTorch shares tensors between its processes through shared memory);
* vLLM is reached on the container's port 8000: published on the Docker host's loopback (a
  gateway on the host), or by the container's name on ``FORGELINE_GATEWAY_VLLM_NETWORK``
  (a gateway in a container on that network);
* the container carries the label ``forgeline.deployment=<name>``, and a hash of what it was
  created with. A gateway that restarts finds it by the label and attaches to it again if it is
  running with the same configuration; otherwise it is removed and created again.

The Docker client is made on first use (``docker.from_env``: ``DOCKER_HOST`` or the local
socket), so a gateway without such deployments never needs the Docker socket. The SDK is
synchronous; its calls run in worker threads. The image is not pulled here: a vLLM image is
several GB, longer than an API call should wait, so a missing image is an error naming the
``docker pull`` to run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# docker-py ships no type hints (and types-docker is not in the lock).
import docker
import docker.errors
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from forgeline_gateway.deployments.spec import VllmSpec
from forgeline_kit.errors import FailedPrecondition

__all__ = [
    "CONTAINER_PORT",
    "LABEL",
    "VllmContainerSettings",
    "VllmContainers",
    "stopped_message",
]

log = logging.getLogger(__name__)

#: The port vLLM listens on inside its container.
CONTAINER_PORT: Final = 8000
#: The label naming the deployment a container serves.
LABEL: Final = "forgeline.deployment"
CONFIG_LABEL: Final = "forgeline.config"
MODELS_TARGET: Final = "/models"
STOP_SECONDS: Final = 30


@dataclass(frozen=True)
class VllmContainerSettings:
    """How vLLM containers are made (from the gateway's settings)."""

    image: str
    model_cache: Path
    model_mount: str | None = None
    network: str | None = None
    docker_timeout: float = 60.0


def container_name(name: str) -> str:
    """The container's name for the deployment `name` (Docker's names are
    ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``; a hash keeps names that reduce alike apart)."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-._")[:40] or "model"
    return f"forgeline-vllm-{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class VllmContainers:
    """Creates, finds and removes the vLLM container of each deployment."""

    def __init__(self, settings: VllmContainerSettings) -> None:
        self.settings = settings
        self._client: docker.DockerClient | None = None

    async def ensure(self, name: str, spec: VllmSpec) -> tuple[str, str]:
        """A running container serving `spec` as `name`: the one already there if it matches,
        else a new one. Its id and vLLM's base URL.

        Raises:
            FailedPrecondition: Docker is unreachable, the image is missing, or the container
                could not be started.
        """
        return await asyncio.to_thread(self._ensure, name, spec)

    async def inspect(self, container_id: str) -> tuple[str, int | None]:
        """The container's state (``running``, ``exited``...) and exit code; ``missing`` if
        it is gone."""
        return await asyncio.to_thread(self._inspect, container_id)

    async def remove(self, name: str) -> None:
        """Stop and remove every container of the deployment `name` (none is fine)."""
        await asyncio.to_thread(self._remove, name)

    # --- in worker threads

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                client = docker.from_env(timeout=int(self.settings.docker_timeout))
                client.ping()
            except docker.errors.DockerException as error:
                raise FailedPrecondition(
                    "vLLM containers need the Docker Engine API: set DOCKER_HOST or mount "
                    f"/var/run/docker.sock into the gateway ({error})",
                    field="registry_model",
                ) from None
            self._client = client
        return self._client

    def _ensure(self, name: str, spec: VllmSpec) -> tuple[str, str]:
        config = self._config(name, spec)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        client = self._docker()
        for container in self._containers(name):
            if container.status == "running" and container.labels.get(CONFIG_LABEL) == digest:
                log.info("vLLM container re-attached", extra={"model": name})
                return str(container.id), self._url(container)
            self._stop_and_remove(container)
        try:
            container = client.containers.create(
                **config, labels={LABEL: name, CONFIG_LABEL: digest}, detach=True
            )
        except docker.errors.ImageNotFound:
            raise FailedPrecondition(
                f"the vLLM image {self.settings.image} is not on the Docker host: pull it "
                f"first (docker pull {self.settings.image})",
                field="registry_model",
            ) from None
        except docker.errors.APIError as error:
            raise FailedPrecondition(
                f"Docker refused to create the vLLM container: {_explanation(error)}",
                field="registry_model",
            ) from None
        try:
            container.start()
            container.reload()
            if container.status != "running":
                exit_code = container.attrs.get("State", {}).get("ExitCode")
                raise FailedPrecondition(
                    stopped_message(str(container.id), container.status, exit_code)
                )
            url = self._url(container)
        except (docker.errors.APIError, FailedPrecondition) as error:
            self._stop_and_remove(container)
            message = (
                error.message if isinstance(error, FailedPrecondition) else _explanation(error)
            )
            if not message.startswith("the vLLM container"):
                message = f"the vLLM container did not start: {message}"
            raise FailedPrecondition(message, field="registry_model") from None
        log.info("vLLM container started", extra={"model": name, "container": container.name})
        return str(container.id), url

    def _config(self, name: str, spec: VllmSpec) -> dict[str, Any]:
        directory = spec.model_directory
        assert directory is not None  # the manager fetches registry_model before placing
        cache = self.settings.model_cache.resolve()
        source = self.settings.model_mount or str(cache)
        environment = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        flags: list[str] = []
        if spec.enable_lora:
            # vLLM's "LoRA Adapters" guide: `--enable-lora` with its slot settings, and the
            # load/unload endpoints exist only with VLLM_ALLOW_RUNTIME_LORA_UPDATING set, which
            # adapter deployments need (they are loaded into the running server, never by a
            # restart). Only then: a deployment without it keeps the configuration (and so the
            # container) it had before these settings existed.
            flags = [
                "--enable-lora",
                "--max-loras",
                str(spec.max_loras),
                "--max-lora-rank",
                str(spec.max_lora_rank),
            ]
            if spec.loaded_adapter_limit > spec.max_loras:
                # vLLM keeps `--max-cpu-loras` adapters in CPU memory (default: max_loras) and
                # would silently drop the oldest past it: sized to what the gateway keeps
                # loaded, its cache holds them all. Only when above the default, so a base
                # without `max_loaded_adapters` keeps its configuration (and container).
                flags += ["--max-cpu-loras", str(spec.loaded_adapter_limit)]
            environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if spec.max_num_seqs is not None:
            # Only when set, so a deployment without it keeps its container.
            flags += ["--max-num-seqs", str(spec.max_num_seqs)]
        config: dict[str, Any] = {
            "image": self.settings.image,
            "name": container_name(name),
            "command": [
                "--model",
                self.mounted_path(directory),
                "--served-model-name",
                name,
                "--tensor-parallel-size",
                str(spec.tensor_parallel_size),
                "--host",
                "0.0.0.0",  # inside the container; its port is published on loopback only
                "--port",
                str(CONTAINER_PORT),
                *flags,
            ],
            # The model comes from the mount; vLLM must never reach for a model hub.
            "environment": environment,
            "device_requests": [
                DeviceRequest(count=spec.tensor_parallel_size, capabilities=[["gpu"]])
            ],
            "mounts": [
                Mount(
                    target=MODELS_TARGET,
                    source=source,
                    type="bind" if source.startswith("/") else "volume",
                    read_only=True,
                )
            ],
            "ipc_mode": "host",
        }
        if self.settings.network:
            config["network"] = self.settings.network
        else:
            config["ports"] = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)}
        return config

    def mounted_path(self, directory: Path) -> str:
        """Where the model cache directory `directory` is seen inside a vLLM container (its
        models, and the adapters loaded into it at runtime).

        Raises:
            ValueError: `directory` is not inside the model cache.
        """
        relative = directory.resolve().relative_to(self.settings.model_cache.resolve())
        return f"{MODELS_TARGET}/{relative.as_posix()}"

    def _url(self, container: Container) -> str:
        if self.settings.network:
            return f"http://{container.name}:{CONTAINER_PORT}"
        bindings = (container.ports or {}).get(f"{CONTAINER_PORT}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                host = binding.get("HostIp") or "127.0.0.1"
                host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
                return f"http://{host}:{binding['HostPort']}"
        raise FailedPrecondition(
            f"Docker published no host port for the vLLM container's port {CONTAINER_PORT}"
        )

    def _containers(self, name: str) -> list[Container]:
        found: list[Container] = self._docker().containers.list(
            all=True, filters={"label": f"{LABEL}={name}"}
        )
        return found

    def _inspect(self, container_id: str) -> tuple[str, int | None]:
        try:
            container = self._docker().containers.get(container_id)
        except docker.errors.NotFound:
            return "missing", None
        exit_code = container.attrs.get("State", {}).get("ExitCode")
        return str(container.status), exit_code if isinstance(exit_code, int) else None

    def _remove(self, name: str) -> None:
        for container in self._containers(name):
            self._stop_and_remove(container)
            log.info("vLLM container removed", extra={"model": name})

    @staticmethod
    def _stop_and_remove(container: Container) -> None:
        try:
            if container.status == "running":
                container.stop(timeout=STOP_SECONDS)
            container.remove()
        except docker.errors.NotFound:
            pass  # already gone


def stopped_message(container_id: str, state: str, exit_code: int | None) -> str:
    """Why a vLLM container is not serving, with where to read its log."""
    short = container_id[:12]
    return (
        f"the vLLM container {short} stopped while starting ({state}, exit code {exit_code}): "
        f"see `docker logs {short}`"
    )


def _explanation(error: docker.errors.APIError) -> str:
    return str(error.explanation or error)
