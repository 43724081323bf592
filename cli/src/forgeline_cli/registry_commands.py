"""The registry's commands: ``forgeline models list|show``, ``forgeline push``, ``forgeline pull``,
``forgeline import`` (a base model from Hugging Face or ModelScope by hub id) and
``forgeline alias``.

They talk to a running registry (``--registry HOST:PORT``, or ``FORGELINE_CLI_REGISTRY``;
default ``127.0.0.1:50051``). Bytes move straight between this machine and the store through
the registry's grants; transfers show progress bars on a terminal, and ``--json`` prints the
result as the API's JSON instead of text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from forgeline_cli.console import (
    EXIT_USAGE,
    add_json_option,
    fail,
    human_size,
    print_json,
    print_listing,
    print_result,
)
from forgeline_cli.services import REGISTRY, run_command
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient, TransferProgress
from forgeline_registry_client.figures import describe_conversion_figures
from forgeline_registry_client.hub import default_cache_dir, import_model

__all__ = ["register_registry_commands"]

_KINDS = {
    name.removeprefix("VERSION_KIND_").lower(): value
    for name, value in pb.VersionKind.items()
    if value != pb.VERSION_KIND_UNSPECIFIED
}


class _Bars(TransferProgress):
    """tqdm bars on stderr, one per phase; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None

    def start(self, phase: str, total: int) -> None:
        if not self._enabled or total == 0:
            return
        from tqdm import tqdm  # type: ignore[import-untyped]

        self._bar = tqdm(
            total=total, desc=phase, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
        )

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _version_line(version: pb.Version) -> str:
    kind = pb.VersionKind.Name(version.kind).removeprefix("VERSION_KIND_").lower()
    aliases = f"  [{', '.join(version.aliases)}]" if version.aliases else ""
    created = version.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{version.model}:{version.number}  {kind}  {version.artifact_count} files  "
        f"{human_size(version.size_bytes)}  {created}{aliases}"
    )


def _model_line(model: pb.Model) -> str:
    aliases = ", ".join(f"{a}={n}" for a, n in sorted(model.aliases.items()))
    return f"{model.name}  {model.version_count} versions  latest {model.latest_version}" + (
        f"  [{aliases}]" if aliases else ""
    )


def _labels(pairs: Iterable[str]) -> dict[str, str] | None:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--label {pair!r}: use KEY=VALUE", EXIT_USAGE)
            return None
        labels[key] = value
    return labels


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(
        args.registry,
        accept_local_files=not args.remote,
        timeout=args.timeout,
        wait_for_ready=False,
    )


def _run(args: argparse.Namespace, action: Callable[[RegistryClient], Awaitable[int]]) -> int:
    async def main() -> int:
        async with _client(args) as client:
            return await action(client)

    return run_command(REGISTRY, args, main())


# --- commands

#: Where the gateway keeps files uploaded through the Files API (training and evaluation data),
#: one registry model each: not models a user deploys, so `models list` leaves them out.
_FILES_PREFIX = "files/"


def _is_uploaded_file(name: str, prefix: str) -> bool:
    """Whether `name` is an uploaded file that `models list --prefix PREFIX` leaves out (not
    when the prefix itself asks for files)."""
    return name.startswith(_FILES_PREFIX) and not prefix.startswith(_FILES_PREFIX)


def _models_list(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        models: list[pb.Model] = []
        token = ""
        for _ in range(10_000):
            page = await client.list_models(
                pb.ListModelsRequest(page_size=1000, page_token=token, name_prefix=args.prefix)
            )
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                break
        shown = [m for m in models if args.all or not _is_uploaded_file(m.name, args.prefix)]
        lines = (_model_line(model) for model in shown)
        print_listing(shown, lines, as_json=args.json, empty="no models" if not models else None)
        hidden = len(models) - len(shown)
        if hidden and not args.json:
            print(
                f"({hidden} uploaded file{'s' if hidden != 1 else ''} of the Files API not "
                "listed: --all lists them)"
            )
        return 0

    return _run(args, action)


def _models_show(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        model = await client.get_model(pb.GetModelRequest(name=args.model))
        versions: list[pb.Version] = []
        token = ""
        for _ in range(10_000):
            page = await client.list_versions(
                pb.ListVersionsRequest(
                    model=args.model, page_size=1000, page_token=token, order_by="number desc"
                )
            )
            versions.extend(page.versions)
            token = page.next_page_token
            if not token:
                break
        if args.json:
            print_json({"model": model, "versions": versions})
            return 0
        print(model.name + (f"  {model.description}" if model.description else ""))
        for key, value in sorted(model.labels.items()):
            print(f"  label {key}={value}")
        for version in versions:
            print("  " + _version_line(version))
            card = _quality(version)
            if card:
                print(f"      quality {card}")
            figures = describe_conversion_figures(version.lineage.metrics)
            if figures:
                print(f"      measured {figures}")
        return 0

    return _run(args, action)


#: The labels a fine-tuning job's evaluation records on a version: ``quality.<grader>``.
_QUALITY_PREFIX = "quality."


def _quality(version: pb.Version) -> str:
    """The version's quality card from its labels (``rouge_l 0.8123, bleu 0.6012``), or ''."""
    return ", ".join(
        f"{key.removeprefix(_QUALITY_PREFIX)} {value}"
        for key, value in sorted(version.labels.items())
        if key.startswith(_QUALITY_PREFIX)
    )


def _push(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    if labels is None:
        return EXIT_USAGE

    async def action(client: RegistryClient) -> int:
        version = await client.push(
            Path(args.directory),
            args.model,
            kind=_KINDS[args.kind] if args.kind else pb.VERSION_KIND_UNSPECIFIED,
            labels=labels,
            description=args.description,
            request_id=args.request_id,
            progress=_Bars(not args.json),
        )
        return print_result(version, f"pushed {_version_line(version)}", as_json=args.json)

    return _run(args, action)


def _pull(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        version = await client.pull(
            args.reference, Path(args.directory), paths=args.path, progress=_Bars(not args.json)
        )
        text = f"pulled {_version_line(version)} into {args.directory}"
        return print_result(version, text, as_json=args.json)

    return _run(args, action)


def _import(args: argparse.Namespace) -> int:
    def step(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    async def action(client: RegistryClient) -> int:
        result = await import_model(
            client,
            args.hub_id,
            name=args.name,
            trust_remote_code=args.trust_remote_code,
            template=args.template,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            keep_cache=args.keep_cache,
            progress=_Bars(not args.json),
            on_step=step,
        )
        version = result.version
        if args.json:
            print_json(
                {
                    "version": version,
                    "reused": result.reused,
                    "commit": result.commit,
                    "skipped": result.skipped,
                }
            )
            return 0
        done = "already imported" if result.reused else "imported"
        print(
            f"{done} {result.hub_id} (commit {result.commit[:12] or 'unknown'}) as "
            f"{_version_line(version)}"
        )
        for path, why in result.skipped.items():
            print(f"  left out {path}: {why}")
        return 0

    return _run(args, action)


def _alias_set(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        request = pb.SetAliasRequest(model=args.model, alias=args.alias, version=args.version)
        if args.expected is not None:
            request.expected_version = args.expected
        alias = await client.set_alias(request)
        text = f"{alias.model}@{alias.name} -> {alias.version}"
        return print_result(alias, text, as_json=args.json)

    return _run(args, action)


def _alias_delete(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        request = pb.DeleteAliasRequest(model=args.model, alias=args.alias)
        if args.expected is not None:
            request.expected_version = args.expected
        await client.delete_alias(request)
        deleted = {"model": args.model, "alias": args.alias, "deleted": True}
        return print_result(deleted, f"{args.model}@{args.alias} deleted", as_json=args.json)

    return _run(args, action)


def _alias_list(args: argparse.Namespace) -> int:
    async def action(client: RegistryClient) -> int:
        model = await client.get_model(pb.GetModelRequest(name=args.model))
        if args.json:
            print_json(dict(model.aliases))
        for alias, number in [] if args.json else sorted(model.aliases.items()):
            print(f"{args.model}@{alias} -> {number}")
        return 0

    return _run(args, action)


# --- wiring


def _common(parser: argparse.ArgumentParser) -> None:
    REGISTRY.add_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "--remote",
        action="store_true",
        help="this machine does not share the registry's filesystem: transfer over HTTP only",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each registry call"
    )


def register_registry_commands(subparsers: Any) -> None:
    """Add ``models``, ``push``, ``import``, ``pull`` and ``alias`` to the ``forgeline``
    command."""
    models = subparsers.add_parser("models", help="list and inspect registered models")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_commands.add_parser("list", help="list models")
    listing.add_argument("--prefix", default="", help="only models whose name starts with this")
    listing.add_argument(
        "--all",
        action="store_true",
        help=f"also list the files uploaded through the gateway's Files API ({_FILES_PREFIX}...)",
    )
    _common(listing)
    listing.set_defaults(run=_models_list)
    show = models_commands.add_parser("show", help="show a model and its versions")
    show.add_argument("model", help="model name")
    _common(show)
    show.set_defaults(run=_models_show)

    push = subparsers.add_parser("push", help="push a model directory as a new version")
    push.add_argument("directory", help="directory to push (a HF/ModelScope model, GGUF, ...)")
    push.add_argument("--model", required=True, help="model name, for example acme/tiny-llama")
    push.add_argument(
        "--kind", choices=sorted(_KINDS), help="what the version is (default: guessed)"
    )
    push.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    push.add_argument("--description", default="")
    push.add_argument(
        "--request-id", default="", help="idempotency key: repeating a push with it is safe"
    )
    _common(push)
    push.set_defaults(run=_push)

    imported = subparsers.add_parser(
        "import",
        help="import a base model from Hugging Face or ModelScope by hub id",
        description="Download a model with the hub's own client (HF_ENDPOINT, HF_TOKEN, "
        "MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN and proxy variables apply) and register it "
        "as a base version with its provenance. Only what the model needs is downloaded; "
        "importing the same commit again finds the earlier version.",
    )
    imported.add_argument(
        "hub_id", metavar="HUB_ID", help="hf:ORG/NAME[@REVISION] or modelscope:ORG/NAME[@REVISION]"
    )
    imported.add_argument(
        "--name", help="registry model name (default: the repository id, e.g. Qwen/Qwen2.5-0.5B)"
    )
    imported.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="import a repository whose config needs its own Python code (auto_map, "
        "modeling_*.py): review that code first; refused without this flag",
    )
    imported.add_argument(
        "--template",
        default="",
        help="the LLaMA-Factory template fine-tuning jobs use (qwen, llama3, ...; default: the "
        "trainer's choice)",
    )
    imported.add_argument(
        "--cache-dir",
        help=f"download cache, kept when an import fails so the next one resumes (default: "
        f"{default_cache_dir()}, from $FORGELINE_CACHE_DIR)",
    )
    imported.add_argument(
        "--keep-cache", action="store_true", help="keep the downloaded files after the import"
    )
    _common(imported)
    imported.set_defaults(run=_import)

    pull = subparsers.add_parser("pull", help="pull a version into a directory")
    pull.add_argument("reference", metavar="MODEL[:VERSION|@ALIAS]")
    pull.add_argument("directory")
    pull.add_argument("--path", action="append", default=[], help="only this artifact (repeatable)")
    _common(pull)
    pull.set_defaults(run=_pull)

    alias = subparsers.add_parser("alias", help="point aliases such as production at versions")
    alias_commands = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    set_ = alias_commands.add_parser("set", help="point MODEL@ALIAS at VERSION")
    set_.add_argument("model")
    set_.add_argument("alias")
    set_.add_argument("version", type=int)
    set_.add_argument(
        "--expected", type=int, help="only if the alias points at this version now (0: unset)"
    )
    _common(set_)
    set_.set_defaults(run=_alias_set)
    delete = alias_commands.add_parser("delete", help="remove MODEL@ALIAS")
    delete.add_argument("model")
    delete.add_argument("alias")
    delete.add_argument("--expected", type=int, help="only if it points at this version now")
    _common(delete)
    delete.set_defaults(run=_alias_delete)
    listed = alias_commands.add_parser("list", help="list a model's aliases")
    listed.add_argument("model")
    _common(listed)
    listed.set_defaults(run=_alias_list)
