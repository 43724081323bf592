"""The gateway's admin API as the CLI calls it: `GatewayAdmin` (deployments, fine-tuning jobs,
evals), the API key it calls with, and `CommandError`, the one-line failure every gateway
command reports.

The CLI keeps its own small pydantic models of the API's bodies rather than importing the
gateway's: it is a client of a versioned HTTP API, so it reads only the fields it shows and
ignores new ones (a newer gateway still works with it), and the server alone decides what a
valid spec is (its 400 messages name the field).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeline_cli.console import add_json_option, fail
from forgeline_cli.services import GATEWAY

__all__ = [
    "KEY_VARIABLES",
    "CommandError",
    "DeploymentMetadata",
    "DeploymentView",
    "GatewayAdmin",
    "RegistryDeployment",
    "api_key",
    "gateway_options",
    "run_admin",
]

#: Where the admin key is read from, first match wins (after ``--api-key``).
KEY_VARIABLES: Final = ("FORGELINE_CLI_API_KEY", "FORGELINE_API_KEY")

#: Placing a model may pull gigabytes or start a container: the gateway answers when it is done.
DEPLOY_TIMEOUT_S: Final = 1800.0
CALL_TIMEOUT_S: Final = 60.0
KEY_HINT: Final = "forgeline-gateway keys create NAME --scope admin"

Backend = Literal["llamacpp", "ollama", "vllm"]


class CommandError(Exception):
    """A failure to report as one line on stderr (exit 1); `status` and `param` when the gateway
    refused the call."""

    def __init__(self, message: str, *, status: int | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


# --- the API's bodies, as far as the CLI reads or writes them


class _ErrorBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str
    param: str | None = None


class _ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    error: _ErrorBody


class DeploymentView(BaseModel):
    """A deployment as ``GET /v1/deployments/{name}`` returns it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    backend: str
    status: str
    error: str | None = None
    instances: int = 0
    adapters: list[str] = Field(default_factory=list)
    #: A vLLM base's adapters loaded in its server now (the others load on demand).
    loaded_adapters: list[str] = Field(default_factory=list)
    created: int = 0
    spec: dict[str, Any] = Field(default_factory=dict)


class _DeploymentList(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[DeploymentView]


class DeploymentMetadata(BaseModel):
    base: str | None = None
    version: str | None = None
    quantization: str | None = None


class RegistryDeployment(BaseModel):
    """The body of ``POST /v1/deployments`` for a registry version."""

    name: str
    backend: Backend
    registry_gguf: str | None = None
    registry_lora: list[str] | None = None
    registry_adapter: str | None = None
    base: str | None = None
    registry_model: str | None = None
    tensor_parallel_size: int | None = None
    enable_lora: bool | None = None
    metadata: DeploymentMetadata


# --- the gateway's admin API


class GatewayAdmin:
    """The admin endpoints of one gateway, each failure a `CommandError` saying what to do."""

    def __init__(
        self, url: str, api_key: str | None, *, transport: httpx.BaseTransport | None = None
    ):
        self.url = url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env off: an HTTP(S)_PROXY meant for the internet is not for the gateway.
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=CALL_TIMEOUT_S,
            trust_env=False,
            transport=transport,
        )

    def __enter__(self) -> GatewayAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def create(self, body: RegistryDeployment) -> DeploymentView:
        response = self._call(
            "POST",
            "/v1/deployments",
            content=body.model_dump_json(exclude_none=True),
            headers={"Content-Type": "application/json"},
            timeout=DEPLOY_TIMEOUT_S,
        )
        return DeploymentView.model_validate_json(response.content)

    def list(self) -> list[DeploymentView]:
        return _DeploymentList.model_validate_json(
            self._call("GET", "/v1/deployments").content
        ).data

    def get(self, name: str) -> DeploymentView:
        return DeploymentView.model_validate_json(
            self._call("GET", f"/v1/deployments/{name}").content
        )

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/v1/deployments/{name}", timeout=DEPLOY_TIMEOUT_S)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any admin endpoint (``forgeline fine-tuning`` uses it): the response of a successful
        call, else a `CommandError`."""
        return self._call(method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise CommandError(
                GATEWAY.unreachable(self.url, f"{type(error).__name__}: {error}")
            ) from None
        if response.is_success:
            return response
        message, param = _error_message(response)
        if response.status_code == 401:
            if not self.api_key:
                raise CommandError(
                    f"the gateway at {self.url} needs an API key with the admin scope: pass "
                    f"--api-key or set ${KEY_VARIABLES[0]} (create one with: {KEY_HINT})"
                )
            raise CommandError(
                f"the gateway at {self.url} refused the API key ({message}): pass a valid key "
                f"with --api-key or ${KEY_VARIABLES[0]} (create one with: {KEY_HINT})"
            )
        if response.status_code == 403:
            raise CommandError(
                "the API key lacks the admin scope that deployments and fine-tuning jobs need: "
                f"use a key made with: {KEY_HINT}"
            )
        raise CommandError(message, status=response.status_code, param=param)


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        error = _ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        return f"the gateway answered {response.status_code}: {response.text[:300]}", None
    return " ".join(error.message.split()), error.param


def api_key(args: argparse.Namespace) -> str | None:
    """The key a gateway command calls with: ``--api-key``, else the first of `KEY_VARIABLES`
    set, else none (a gateway without keys)."""
    if args.api_key:
        return str(args.api_key)
    for variable in KEY_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def gateway_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every gateway admin command takes: ``--gateway``, ``--api-key`` (read by
    `api_key`) and ``--json``."""
    GATEWAY.add_option(parser)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"an API key with the admin scope (default: ${' or $'.join(KEY_VARIABLES)})",
    )
    add_json_option(parser)


def run_admin(args: argparse.Namespace, action: Callable[[GatewayAdmin], int]) -> int:
    """Run `action` on the gateway of `args`; a `CommandError` becomes the command's failure."""
    try:
        with GatewayAdmin(args.gateway, api_key(args)) as admin:
            return action(admin)
    except CommandError as error:
        return fail(str(error))
