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
The calls themselves, and the bodies as the CLI reads them, are `forgeline_cli.gateway_admin`'s.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from forgeline_cli.console import print_listing, print_result
from forgeline_cli.gateway_admin import (
    CommandError,
    DeploymentMetadata,
    DeploymentView,
    GatewayAdmin,
    RegistryDeployment,
    gateway_options,
    run_admin,
)
from forgeline_cli.services import REGISTRY
from forgeline_kit.errors import ForgelineError, Unavailable
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient

__all__ = ["register"]

_GGUF_BACKENDS: Final = frozenset({"llamacpp", "ollama"})
_HF_KINDS: Final = frozenset(
    {rpb.VERSION_KIND_BASE, rpb.VERSION_KIND_MERGED, rpb.VERSION_KIND_FINETUNED}
)


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
        if adapter:
            version = await client.resolve_version(
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
                own = await client.get_version(rpb.GetVersionRequest(model=model, version=number))
                if own.kind == rpb.VERSION_KIND_GGUF:
                    if (_quantization(own) or "").lower() != quantization.lower():
                        raise CommandError(
                            f"{model}:{number} is a GGUF {_quantization(own) or ''}, not "
                            f"{quantization}: leave out --quantization or name the "
                            f"{quantization} version"
                        )
                    return _Resolved(f"{model}:{number}", _quantization(own))
            found = (await client.list_versions(request)).versions
            if not found:
                source = f"{model}:{number}" if number is not None else model
                raise CommandError(
                    f"no {quantization} GGUF of {source} is registered: convert it first "
                    f"(forgeline convert {source} --to {quantization})"
                )
            return _Resolved(f"{model}:{found[0].number}", _quantization(found[0]))
        target = f"{model}:{number}" if number is not None else model
        version = await client.resolve_version(
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


def _deploy_body(args: argparse.Namespace) -> RegistryDeployment:
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
        return RegistryDeployment(
            name=args.name or model,
            backend=args.backend,
            registry_lora=None if vllm else [resolved.reference],
            registry_adapter=resolved.reference if vllm else None,
            base=args.base,
            metadata=DeploymentMetadata(version=resolved.reference),
        )
    gguf = args.backend in _GGUF_BACKENDS
    return RegistryDeployment(
        name=args.name or model,
        backend=args.backend,
        registry_gguf=resolved.reference if gguf else None,
        registry_model=None if gguf else resolved.reference,
        tensor_parallel_size=None if gguf else args.tensor_parallel_size,
        enable_lora=True if args.enable_lora else None,
        metadata=DeploymentMetadata(
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


def _with_hint(message: str, error: CommandError, body: RegistryDeployment) -> str:
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
    gateway_options(deploy)
    deploy.set_defaults(run=_deploy)

    undeploy = subparsers.add_parser("undeploy", help="stop serving a deployment")
    undeploy.add_argument("name", help="the deployment's model name")
    gateway_options(undeploy)
    undeploy.set_defaults(run=_undeploy)

    deployments = subparsers.add_parser("deployments", help="list or show deployments")
    deployments.add_argument(
        "action", nargs="?", choices=["list", "show"], default="list", help="default: list"
    )
    deployments.add_argument("name", nargs="?", default="", help="the deployment (with show)")
    gateway_options(deployments)
    deployments.set_defaults(run=_deployments)
