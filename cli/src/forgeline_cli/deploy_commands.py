"""Deployments from the command line: ``forgeline deploy``, ``undeploy`` and ``deployments``.

They talk to the gateway's admin API over HTTP (``--gateway URL``, or ``FORGELINE_CLI_GATEWAY``;
default ``http://127.0.0.1:8080``, the gateway's own default) with an API key holding the admin
scope (``--api-key``, or ``FORGELINE_CLI_API_KEY``, or ``FORGELINE_API_KEY``).

``forgeline deploy MODEL:VERSION`` puts a registry version on a backend: a GGUF version on
llama.cpp or Ollama (``registry_gguf``; the gateway pulls it into its model cache), an HF model
(base, merged or fully fine-tuned) on a vLLM container (``registry_model``). With ``--base
DEPLOYMENT`` a GGUF adapter version is served as an adapter on that deployment (``registry_lora``
and ``base``): on a llama.cpp base, on its processes (one process for the base and all its
fine-tunes); on an Ollama base, as an Ollama model of its own made from the base's (its weights
stored once for all its fine-tunes); on a vLLM base started with ``enable_lora``, the HF/PEFT
adapter version itself (``registry_adapter``), loaded into its running server. The registry
(``--registry``) is asked only to resolve what the gateway cannot: a reference without a version
(the newest one) and ``--quantization`` (the GGUF of that type converted from the version).

The CLI keeps its own small pydantic models of the API's bodies rather than importing the
gateway's: it is a client of a versioned HTTP API, so it reads only the fields it shows and
ignores new ones (a newer gateway still works with it), and the server alone decides what a
valid spec is (its 400 messages name the field).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeline_cli.console import add_json_option, fail, print_listing, print_result
from forgeline_cli.services import GATEWAY, REGISTRY
from forgeline_kit.errors import ForgelineError, Unavailable
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry.client import RegistryClient

__all__ = [
    "KEY_VARIABLES",
    "DeploymentView",
    "GatewayAdmin",
    "register",
]

#: Where the admin key is read from, first match wins (after ``--api-key``).
KEY_VARIABLES: Final = ("FORGELINE_CLI_API_KEY", "FORGELINE_API_KEY")

#: Placing a model may pull gigabytes or start a container: the gateway answers when it is done.
DEPLOY_TIMEOUT_S: Final = 1800.0
CALL_TIMEOUT_S: Final = 60.0
KEY_HINT: Final = "forgeline-gateway keys create NAME --scope admin"

Backend = Literal["llamacpp", "ollama", "vllm"]
_GGUF_BACKENDS: Final = frozenset({"llamacpp", "ollama"})
_HF_KINDS: Final = frozenset(
    {rpb.VERSION_KIND_BASE, rpb.VERSION_KIND_MERGED, rpb.VERSION_KIND_FINETUNED}
)


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


class _Metadata(BaseModel):
    base: str | None = None
    version: str | None = None
    quantization: str | None = None


class _RegistryDeployment(BaseModel):
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
    metadata: _Metadata


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

    def create(self, body: _RegistryDeployment) -> DeploymentView:
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


# --- resolving registry references


@dataclass(frozen=True)
class _Resolved:
    reference: str
    quantization: str | None


def _split(reference: str) -> tuple[str, int | None]:
    model, sep, version = reference.rpartition(":")
    if sep and version.isdigit() and model:
        return model, int(version)
    if sep and model:
        raise CommandError(
            f"'{reference}' is not MODEL or MODEL:VERSION (VERSION is a version number)"
        )
    return reference, None


def _quantization(version: rpb.Version) -> str | None:
    return version.labels.get("quantization") or None


async def _resolve(
    registry: str,
    model: str,
    number: int | None,
    backend: str,
    quantization: str | None,
    *,
    adapter: bool = False,
) -> _Resolved:
    """The concrete version to deploy: for llama.cpp and Ollama a GGUF (of `quantization`, if
    given; a GGUF adapter with `adapter`), for vLLM an HF model."""
    async with RegistryClient(registry, wait_for_ready=False) as client:
        stub = client.stub
        if adapter:
            version = await stub.ResolveVersion(
                rpb.ResolveVersionRequest(
                    reference=model if number is None else f"{model}:{number}",
                    view=rpb.VERSION_VIEW_BASIC,
                )
            )
            reference = f"{version.model}:{version.number}"
            kind = rpb.VersionKind.Name(version.kind).removeprefix("VERSION_KIND_").lower()
            if backend == "vllm" and version.kind != rpb.VERSION_KIND_ADAPTER:
                raise CommandError(
                    f"{reference} is a {kind} version, not an HF/PEFT adapter: --base on vLLM "
                    "loads the adapter a fine-tuning job trained (kind adapter)"
                )
            if backend != "vllm" and version.kind != rpb.VERSION_KIND_GGUF_ADAPTER:
                raise CommandError(
                    f"{reference} is a {kind} version, not a GGUF adapter: --base serves GGUF "
                    f"adapters (forgeline convert ADAPTER --adapter makes one)"
                )
            return _Resolved(reference, None)
        if quantization and backend in _GGUF_BACKENDS:
            request = rpb.ListVersionsRequest(
                model=model,
                kinds=[rpb.VERSION_KIND_GGUF],
                labels={"quantization": quantization.lower()},
                order_by="number desc",
                page_size=1,
            )
            if number is not None:
                request.parent.CopyFrom(common_pb2.VersionRef(model=model, version=number))
                request.relation = rpb.RELATION_CONVERTED_FROM
                # The version itself may be the GGUF asked for.
                own = await stub.GetVersion(rpb.GetVersionRequest(model=model, version=number))
                if own.kind == rpb.VERSION_KIND_GGUF:
                    if (_quantization(own) or "").lower() != quantization.lower():
                        raise CommandError(
                            f"{model}:{number} is a GGUF {_quantization(own) or ''}, not "
                            f"{quantization}: leave out --quantization or name the "
                            f"{quantization} version"
                        )
                    return _Resolved(f"{model}:{number}", _quantization(own))
            found = (await stub.ListVersions(request)).versions
            if not found:
                source = f"{model}:{number}" if number is not None else model
                raise CommandError(
                    f"no {quantization} GGUF of {source} is registered: convert it first "
                    f"(forgeline convert {source} --to {quantization})"
                )
            return _Resolved(f"{model}:{found[0].number}", _quantization(found[0]))
        target = f"{model}:{number}" if number is not None else model
        version = await stub.ResolveVersion(
            rpb.ResolveVersionRequest(reference=target, view=rpb.VERSION_VIEW_BASIC)
        )
        reference = f"{version.model}:{version.number}"
        kind = rpb.VersionKind.Name(version.kind).removeprefix("VERSION_KIND_").lower()
        if backend in _GGUF_BACKENDS and version.kind != rpb.VERSION_KIND_GGUF:
            raise CommandError(
                f"{reference} is a {kind} version, not a GGUF: pass --quantization TYPE to "
                f"deploy a GGUF converted from it (forgeline convert {reference} --to TYPE)"
            )
        if backend == "vllm" and version.kind not in _HF_KINDS:
            raise CommandError(
                f"{reference} is a {kind} version: vLLM serves HF models (a base, merged or "
                "fine-tuned version)"
            )
        return _Resolved(reference, _quantization(version))


def _deploy_body(args: argparse.Namespace) -> _RegistryDeployment:
    model, number = _split(args.reference)
    if args.enable_lora and (args.backend != "vllm" or args.base):
        raise CommandError(
            "--enable-lora is for a vLLM base deployment; llama.cpp and Ollama bases take "
            "adapters as they are"
        )
    if args.base and args.quantization:
        raise CommandError(
            "--base serves an adapter on its base deployment, which decides the quantization: "
            "leave out --quantization"
        )
    needs_registry = number is None or args.quantization is not None
    if needs_registry:
        try:
            resolved = asyncio.run(
                _resolve(
                    args.registry,
                    model,
                    number,
                    args.backend,
                    args.quantization,
                    adapter=bool(args.base),
                )
            )
        except Unavailable as error:
            raise CommandError(
                f"cannot reach the registry at {args.registry} to resolve {args.reference}: is "
                f"it running? {REGISTRY.hint}, or name a version (MODEL:VERSION) "
                f"({error.message})"
            ) from None
        except ForgelineError as error:
            raise CommandError(
                f"{error.message} (list versions with: forgeline models show {model})"
            ) from None
    else:
        resolved = _Resolved(f"{model}:{number}", args.quantization)
    if args.base:
        # vLLM loads the HF/PEFT adapter itself into the base's server; llama.cpp and Ollama
        # take its GGUF conversion.
        vllm = args.backend == "vllm"
        return _RegistryDeployment(
            name=args.name or model,
            backend=args.backend,
            registry_lora=None if vllm else [resolved.reference],
            registry_adapter=resolved.reference if vllm else None,
            base=args.base,
            metadata=_Metadata(version=resolved.reference),
        )
    gguf = args.backend in _GGUF_BACKENDS
    return _RegistryDeployment(
        name=args.name or model,
        backend=args.backend,
        registry_gguf=resolved.reference if gguf else None,
        registry_model=None if gguf else resolved.reference,
        tensor_parallel_size=None if gguf else args.tensor_parallel_size,
        enable_lora=True if args.enable_lora else None,
        metadata=_Metadata(
            version=resolved.reference,
            quantization=resolved.quantization.lower() if resolved.quantization else None,
        ),
    )


# --- output


def _base_of(view: DeploymentView) -> str | None:
    """The base deployment an adapter deployment is served on (None for any other)."""
    base = view.spec.get("base")
    return str(base) if base else None


def _source(view: DeploymentView) -> str:
    spec = view.spec
    for key in ("registry_gguf", "registry_model", "gguf", "base_model"):
        if spec.get(key):
            return str(spec[key])
    adapters = [
        *(spec.get("registry_lora") or []),
        *(spec.get("lora") or []),
        *([spec["registry_adapter"]] if spec.get("registry_adapter") else []),
        *([spec["adapter"]] if spec.get("adapter") else []),
    ]
    if spec.get("base"):
        return f"{', '.join(adapters)} on {spec['base']}"
    urls = spec.get("urls") or []
    return f"{len(urls)} url(s)" if urls else ""


def _line(view: DeploymentView, *, indent: str = "") -> str:
    """One deployment in one line; an adapter deployment's names the base it is served on."""
    created = datetime.fromtimestamp(view.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
    source = _source(view)
    if _base_of(view):
        source = f"adapter {source}"
    elif view.adapters:
        source = f"{source}  (+{len(view.adapters)} adapter(s))"
    return (
        f"{indent}{view.name}  {view.backend:<8} {view.status:<6} {view.instances} instance(s)  "
        f"{created}  {source}"
    )


def _listing(views: list[DeploymentView]) -> list[str]:
    """The deployments' lines: each base deployment with the adapter deployments served on its
    processes beneath it, indented; an adapter whose base is not listed stands alone."""
    names = {view.name for view in views}
    attached: dict[str, list[DeploymentView]] = {}
    for view in views:
        base = _base_of(view)
        if base is not None and base in names:
            attached.setdefault(base, []).append(view)
    lines: list[str] = []
    for view in views:
        base = _base_of(view)
        if base is not None and base in names:
            continue
        lines.append(_line(view))
        lines += [_line(adapter, indent="  ") for adapter in attached.get(view.name, [])]
    return lines


def _details(view: DeploymentView) -> str:
    lines = [_line(view)]
    if view.error:
        lines.append(f"  error     {view.error}")
    base = _base_of(view)
    if base:
        # On Ollama, an adapter is a model of its own made from the base's model.
        how = "a model made from it" if view.backend == "ollama" else "an adapter on its processes"
        lines.append(f"  {'served on':<12}{base} ({how})")
    metadata = view.spec.get("metadata") or {}
    lines += [
        f"  {key:<12}{metadata[key]}"
        for key in ("base", "version", "quantization")
        if metadata.get(key)
    ]
    if view.adapters:
        lines.append(f"  {'adapters':<12}{', '.join(view.adapters)}")
    if view.loaded_adapters:
        lines.append(f"  {'loaded':<12}{', '.join(view.loaded_adapters)}")
    return "\n".join(lines)


# --- commands


def api_key(args: argparse.Namespace) -> str | None:
    """The key a gateway command calls with: ``--api-key``, else the first of `KEY_VARIABLES`
    set, else none (a gateway without keys)."""
    if args.api_key:
        return str(args.api_key)
    for variable in KEY_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def run_admin(args: argparse.Namespace, action: Callable[[GatewayAdmin], int]) -> int:
    """Run `action` on the gateway of `args`; a `CommandError` becomes the command's failure."""
    try:
        with GatewayAdmin(args.gateway, api_key(args)) as admin:
            return action(admin)
    except CommandError as error:
        return fail(str(error))


def _deploy(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        body = _deploy_body(args)
        try:
            view = admin.create(body)
        except CommandError as error:
            raise CommandError(_with_hint(str(error), error, body)) from None
        text = (
            f"deployed {view.name} on {view.backend} ({view.instances} instance(s))\n"
            f"  model     {_source(view)}\n"
            f"  call it   model='{view.name}' at {admin.url}/v1"
        )
        return print_result(view, text, as_json=args.json)

    return run_admin(args, action)


def _with_hint(message: str, error: CommandError, body: _RegistryDeployment) -> str:
    """The gateway's message, with the command that helps for the usual mistakes."""
    reference = body.registry_gguf or body.registry_model or ""
    model = reference.rpartition(":")[0]
    if error.status == 404 and model:
        return f"{message} (list versions with: forgeline models show {model})"
    if error.status == 400 and error.param == "registry_gguf" and "GGUF files" in message:
        return (
            f"{message}; to deploy a GGUF converted from it, pass --quantization TYPE "
            f"(or convert it: forgeline convert {reference} --to TYPE)"
        )
    return message


def _undeploy(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        admin.delete(args.name)
        deleted = {"name": args.name, "deleted": True}
        return print_result(deleted, f"undeployed {args.name}", as_json=args.json)

    return run_admin(args, action)


def _deployments(args: argparse.Namespace) -> int:
    def action(admin: GatewayAdmin) -> int:
        if args.action == "show":
            if not args.name:
                raise CommandError("name the deployment: forgeline deployments show NAME")
            view = admin.get(args.name)
            return print_result(view, _details(view), as_json=args.json)
        views = admin.list()
        return print_listing(views, _listing(views), as_json=args.json, empty="no deployments")

    return run_admin(args, action)


# --- wiring


def _gateway_options(parser: argparse.ArgumentParser) -> None:
    GATEWAY.add_option(parser)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"an API key with the admin scope (default: ${' or $'.join(KEY_VARIABLES)})",
    )
    add_json_option(parser)


def register(subparsers: Any) -> None:
    """Add ``deploy``, ``undeploy`` and ``deployments`` to the ``forgeline`` command."""
    deploy = subparsers.add_parser(
        "deploy",
        help="serve a registered model version through the gateway",
        description="Put a registry version on a backend of the gateway: a GGUF on llama.cpp "
        "or Ollama, an HF model (base, merged, fine-tuned) on a vLLM container.",
    )
    deploy.add_argument("reference", metavar="MODEL[:VERSION]", help="the version to deploy")
    deploy.add_argument(
        "--backend", required=True, choices=["llamacpp", "ollama", "vllm"], help="where to serve"
    )
    deploy.add_argument("--name", default="", help="the model name clients use (default: MODEL)")
    deploy.add_argument(
        "--quantization",
        default=None,
        metavar="TYPE",
        help="deploy the GGUF of this type (q8_0, q4_k_m, f16...) converted from the version",
    )
    deploy.add_argument(
        "--base",
        default=None,
        metavar="DEPLOYMENT",
        help="serve the adapter version as an adapter on this deployment (give the base's "
        "--backend): a GGUF adapter on a llama.cpp base's processes (shared with the base and "
        "its other adapters) or as an Ollama model made from an Ollama base's; an HF/PEFT "
        "adapter loaded at runtime into a vLLM base started with enable_lora",
    )
    deploy.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        metavar="N",
        help="vLLM: GPUs the model is split over (default 1)",
    )
    deploy.add_argument(
        "--enable-lora",
        action="store_true",
        help="vLLM: serve fine-tunes of this model as adapters on it (then deploy each with "
        "--base NAME)",
    )
    REGISTRY.add_option(deploy, "to resolve a version-less MODEL or --quantization")
    _gateway_options(deploy)
    deploy.set_defaults(run=_deploy)

    undeploy = subparsers.add_parser("undeploy", help="stop serving a deployment")
    undeploy.add_argument("name", help="the deployment's model name")
    _gateway_options(undeploy)
    undeploy.set_defaults(run=_undeploy)

    deployments = subparsers.add_parser("deployments", help="list or show deployments")
    deployments.add_argument(
        "action", nargs="?", choices=["list", "show"], default="list", help="default: list"
    )
    deployments.add_argument("name", nargs="?", default="", help="the deployment (with show)")
    _gateway_options(deployments)
    deployments.set_defaults(run=_deployments)
