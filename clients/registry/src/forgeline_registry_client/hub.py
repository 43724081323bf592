"""Base models by hub id: ``hf:ORG/NAME[@REVISION]`` and ``modelscope:ORG/NAME[@REVISION]``.

The one implementation of a hub import, for every caller (``forgeline import`` in the CLI, a
fine-tuning job whose base model is a hub id in the gateway)::

    async with RegistryClient(target) as registry:
        result = await import_model(registry, "hf:Qwen/Qwen2.5-0.5B-Instruct")

1. **Resolve** with the hub's own client: the revision (default: the hub's default branch) becomes
   a commit, and the repository's files are listed with the hub's digests (Hugging Face:
   ``HfApi.model_info`` and ``list_repo_tree``; ModelScope: the revisions and ``repo/files``
   listings of ``modelscope_hub``'s ``HubApi``, which ``modelscope`` 1.40 delegates to).
2. **Reuse**: a base version of the target model recording the same hub, repository and commit is
   the answer; nothing is downloaded (an import is idempotent).
3. **Refuse remote code**: a repository whose ``config.json`` or ``tokenizer_config.json`` has an
   ``auto_map``, or that ships modeling/configuration/tokenization ``.py`` files, needs its own
   code to load; it is imported only when the operator says ``trust_remote_code``.
4. **Choose** what the model needs (:func:`select_files`): safetensors over PyTorch ``.bin``, only
   the shards the weight index names, config/tokenizer/generation files, no other formats
   (``*.h5``, ``*.msgpack``, ``*.onnx``, ``*.gguf``, ``*.pth``...), nothing from subdirectories
   such as ``original/``.
5. **Download** those files with the hub client's snapshot download into a cache directory
   (``$FORGELINE_CACHE_DIR/hub/<hub>/<ORG>--<NAME>/<REVISION>``) that outlives a failed attempt,
   so the clients' own resume applies: HTTP ``Range`` after a dropped connection, completed
   files kept, ModelScope's ``.incomplete`` files resumed by the next attempt (huggingface_hub
   discards a partial plain-HTTP file; Xet-stored files resume from its chunk cache). Endpoints
   (mirrors), tokens and proxies are the clients' own settings: ``HF_ENDPOINT``, ``HF_TOKEN``;
   ``MODELSCOPE_ENDPOINT`` (or the deprecated ``MODELSCOPE_DOMAIN``), ``MODELSCOPE_API_TOKEN``;
   ``HTTPS_PROXY``...
6. **Verify** every file against the hub's digest (the Git LFS sha256, ModelScope's ``Sha256``,
   or the Git blob id of a small file) before anything is pushed.
7. **Register** a base version with its provenance (``Lineage.provenance``: hub, repository,
   revision, commit, endpoint, each file's sha256 and hub digest) and labels that find it again
   (``hub``, ``hub.repo``, ``hub.revision``, ``hub.commit``). The cache is then removed unless
   asked to keep it.

The hub clients are imported lazily (the ``hub`` extra of forgeline-registry-client), so a caller
that never imports by hub id (the trainer, the converter) never needs them.

This module runs the import (steps 2, 5, 6 and 7) and holds its entry points; `hub_repos` has
hub ids and the choice of files (steps 3 and 4), `hub_clients` the hubs' clients (step 1 and
the downloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from forgeline_kit.errors import FailedPrecondition, ForgelineError, NotFound
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import PushPlan, RegistryClient, TransferProgress
from forgeline_registry_client.hub_clients import hub_client, hub_error
from forgeline_registry_client.hub_repos import (
    HUGGING_FACE,
    METADATA_FILES,
    MODELSCOPE,
    HubId,
    RemoteFile,
    RemoteSnapshot,
    Selection,
    default_model_name,
    is_hub_id,
    is_weights_index,
    parse_hub_id,
    remote_code,
    select_files,
)
from forgeline_registry_client.importer import LocalArtifact, local_artifact
from forgeline_registry_client.names import check_model_name

__all__ = [
    "HUGGING_FACE",
    "MODELSCOPE",
    "HubId",
    "HubImporter",
    "ImportResult",
    "RemoteFile",
    "RemoteSnapshot",
    "Selection",
    "default_cache_dir",
    "default_model_name",
    "find_import",
    "import_model",
    "is_hub_id",
    "parse_hub_id",
    "remote_code",
    "select_files",
]

log = logging.getLogger(__name__)

#: Labels of an imported version; `find_import` looks versions up by them.
LABEL_HUB: Final = "hub"
LABEL_REPO: Final = "hub.repo"
LABEL_REVISION: Final = "hub.revision"
LABEL_COMMIT: Final = "hub.commit"

#: Where the CLI's caches live (the llama.cpp build uses the same variable).
CACHE_DIR_ENV: Final = "FORGELINE_CACHE_DIR"

_CHUNK = 1024 * 1024


def default_cache_dir() -> Path:
    """``$FORGELINE_CACHE_DIR/hub`` (default ``~/.cache/forgeline/hub``)."""
    base = os.environ.get(CACHE_DIR_ENV) or str(Path.home() / ".cache" / "forgeline")
    return Path(base) / "hub"


# --- verifying and registering ---------------------------------------------------------------


def _digests(file: Path, git: bool, advance: Callable[[int], None]) -> tuple[str, str, int]:
    """SHA-256, Git blob SHA-1 (when `git`) and size of `file`, in one pass."""
    size = file.stat().st_size
    sha256 = hashlib.sha256()
    # Git's blob id: SHA-1 of a "blob <size>" header and the content.
    sha1 = hashlib.sha1(f"blob {size}\0".encode()) if git else None
    with file.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
            advance(len(chunk))
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else "", size


def _verify(
    snapshot: RemoteSnapshot,
    directory: Path,
    paths: Sequence[str],
    progress: TransferProgress,
) -> tuple[PushPlan, list[pb.ProvenanceFile]]:
    """Hash every downloaded file once, check it against the hub's listing, and plan its push."""
    local: list[LocalArtifact] = [local_artifact(directory / p, p) for p in paths]
    progress.start("verifying", sum(a.file.stat().st_size for a in local))
    artifacts, provenance = [], []
    for item in local:
        remote = snapshot.file(item.path)
        assert remote is not None
        algorithm, _, expected = remote.hub_digest.partition(":")
        sha256, sha1, size = _digests(item.file, algorithm == "git-blob-sha1", progress.advance)
        actual = sha1 if algorithm == "git-blob-sha1" else sha256
        if size != remote.size or (expected and actual != expected):
            what = f"{size} bytes, {algorithm} {actual}" if expected else f"{size} bytes"
            raise FailedPrecondition(
                f"{snapshot.hub_id}: {item.path} does not match the hub's listing ({remote.size} "
                f"bytes, {remote.hub_digest or 'no digest'}; downloaded: {what}). Nothing was "
                f"registered; run the import again to download it afresh"
            )
        artifacts.append(
            pb.Artifact(
                path=item.path,
                kind=item.kind,
                sha256=sha256,
                size_bytes=size,
                media_type=item.media_type,
                gguf_file_type=item.gguf_file_type,
            )
        )
        provenance.append(
            pb.ProvenanceFile(
                path=item.path, sha256=sha256, size_bytes=size, hub_digest=remote.hub_digest
            )
        )
    progress.finish()
    return PushPlan(artifacts, {a.path: a.file for a in local}), provenance


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _chat_template(directory: Path) -> str:
    """The chat template the tokenizer carries (``chat_template.jinja``, or the string in
    ``tokenizer_config.json``), or empty."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        with contextlib.suppress(OSError, ValueError):
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
    return ""


def _read_indexes(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    indexes = {}
    for name in names:
        if is_weights_index(name) and (directory / name).is_file():
            with contextlib.suppress(OSError, ValueError):
                indexes[name] = json.loads((directory / name).read_text(encoding="utf-8"))
    return indexes


@dataclass(frozen=True)
class ImportResult:
    """What an import registered, or found registered already."""

    version: pb.Version
    #: True when an earlier import of the same commit was found and nothing was downloaded.
    reused: bool
    hub_id: HubId
    commit: str
    #: Files of the repository left out, with why.
    skipped: dict[str, str] = field(default_factory=dict)


async def find_import(
    registry: RegistryClient,
    hub_id: HubId,
    *,
    name: str | None = None,
    commit: str | None = None,
) -> pb.Version | None:
    """The newest base version of `name` (default: the repository's default name) imported from
    `hub_id`'s repository at `commit`, or (without a commit) at the revision as named; None when
    there is none."""
    labels = {LABEL_HUB: hub_id.hub, LABEL_REPO: hub_id.repo_id}
    if commit:
        labels[LABEL_COMMIT] = commit
    else:
        labels[LABEL_REVISION] = hub_id.revision
    try:
        answer = await registry.list_versions(
            pb.ListVersionsRequest(
                model=name or default_model_name(hub_id.repo_id),
                kinds=[pb.VERSION_KIND_BASE],
                labels=labels,
                order_by="number desc",
                page_size=1,
            )
        )
    except NotFound:
        return None
    return answer.versions[0] if answer.versions else None


async def import_model(
    registry: RegistryClient,
    reference: str | HubId,
    *,
    name: str | None = None,
    trust_remote_code: bool = False,
    template: str = "",
    cache_dir: Path | None = None,
    keep_cache: bool = False,
    safetensors_only: bool = False,
    progress: TransferProgress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ImportResult:
    """Import a hub repository as a base version (see the module's description).

    Args:
        registry: where to register it.
        reference: ``hf:ORG/NAME[@REVISION]`` or ``modelscope:ORG/NAME[@REVISION]``.
        name: the registry model (default: :func:`default_model_name` of the repository).
        trust_remote_code: import a repository that needs its own code to load (its ``*.py``
            files come along); refused otherwise.
        template: the LLaMA-Factory template of the model (``qwen``, ``llama3``...), recorded in
            the lineage for fine-tuning jobs; empty leaves the choice to the trainer.
        cache_dir: the download cache (default: :func:`default_cache_dir`).
        keep_cache: keep the downloaded files after a successful import.
        safetensors_only: refuse a repository whose only weights are PyTorch pickles.
        progress: told about the verifying and uploading phases (the hub clients show their own
            download progress on a terminal).
        on_step: told each step in one line (resolved, downloading, registered...).

    Raises:
        InvalidArgument: the reference or name is malformed, or the repository holds no
            weights Forgeline loads.
        NotFound, PermissionDenied: the hub does not know the repository or revision, or
            refuses the token.
        FailedPrecondition: the repository needs remote code; a file does not match the hub's
            digest; the hub client is missing or offline.
        Unavailable: the hub cannot be reached (running the import again resumes).
    """
    hub_id = parse_hub_id(reference) if isinstance(reference, str) else reference
    model = check_model_name(name or default_model_name(hub_id.repo_id), "name")
    step = on_step or (lambda message: log.info(message))
    progress = progress or TransferProgress()
    client = hub_client(hub_id.hub)
    # One directory per repository and revision: a successful import removes its own only.
    cache = (
        (cache_dir or default_cache_dir())
        / hub_id.hub
        / hub_id.repo_id.replace("/", "--")
        / hub_id.revision.replace("/", "--")
    )

    async def hub_call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except ForgelineError:
            raise
        except Exception as error:
            raise hub_error(hub_id, client.endpoint, error, cache) from error

    snapshot: RemoteSnapshot = await hub_call(client.resolve, hub_id)
    step(f"{hub_id} is commit {snapshot.commit or '(unknown)'} on {snapshot.endpoint}")
    # Without a commit (a ModelScope listing that names none) nothing proves an earlier import
    # is the same content: import again.
    existing = (
        await find_import(registry, hub_id, name=model, commit=snapshot.commit)
        if snapshot.commit
        else None
    )
    if existing is not None:
        step(f"already imported as {existing.model}:{existing.number}")
        return ImportResult(existing, True, hub_id, snapshot.commit)

    names = {f.path for f in snapshot.files}
    first = [n for n in METADATA_FILES if n in names]
    directory: Path = await hub_call(client.download, snapshot, first, cache) if first else cache
    reasons = remote_code(snapshot.files, directory)
    if reasons and not trust_remote_code:
        raise FailedPrecondition(
            f"{hub_id} needs code from the repository to load: {'; '.join(reasons)}. Forgeline "
            "does not run a repository's code unless an operator trusts it: review that code, "
            f"then run `forgeline import {hub_id.scheme}:{hub_id.repo_id}@{hub_id.revision} "
            "--trust-remote-code` (fine-tuning jobs never import such a repository themselves)",
            field="model",
        )
    selection = select_files(
        snapshot.files,
        _read_indexes(directory, first),
        trust_remote_code=trust_remote_code,
        safetensors_only=safetensors_only,
    )
    total = sum(f.size for f in snapshot.files if f.path in selection.paths)
    step(
        f"downloading {len(selection.paths)} files ({_size(total)}) into {cache}; leaving out "
        f"{len(selection.skipped)}"
    )
    directory = await hub_call(client.download, snapshot, selection.paths, cache)
    plan, files = await asyncio.to_thread(_verify, snapshot, directory, selection.paths, progress)
    provenance = pb.Provenance(
        hub=hub_id.hub,
        repo_id=hub_id.repo_id,
        revision=hub_id.revision,
        commit=snapshot.commit,
        endpoint=snapshot.endpoint,
        files=files,
    )
    labels = {LABEL_HUB: hub_id.hub, LABEL_REPO: hub_id.repo_id, LABEL_REVISION: hub_id.revision}
    if snapshot.commit:
        labels[LABEL_COMMIT] = snapshot.commit
    if trust_remote_code and reasons:
        labels["trust_remote_code"] = "true"
    version = await registry.push_plan(
        plan,
        model,
        kind=pb.VERSION_KIND_BASE,
        lineage=pb.Lineage(
            template=template,
            chat_template=_chat_template(directory),
            tool_versions=snapshot.tool_versions,
            provenance=provenance,
        ),
        labels=labels,
        description=f"Imported from {hub_id} (commit {snapshot.commit or 'unknown'})",
        progress=progress,
    )
    step(f"registered {version.model}:{version.number}")
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            cache.parent.rmdir()  # the repository's directory, once no revision is left in it
    return ImportResult(version, False, hub_id, snapshot.commit, selection.skipped)


class HubImporter:
    """Hub ids where a service names a base model (the gateway's fine-tuning jobs).

    With `allow_downloads`, a hub id is imported (or an import of the same commit reused);
    concurrent or repeated requests for one hub id share one import, which goes on when the
    caller that started it goes away. Without, only an earlier import of the same repository and
    revision is found. What could run code is never imported here (an API key must not get code
    execution): a repository that needs remote code, or whose only weights are PyTorch pickles;
    an operator can import those with ``forgeline import``.
    """

    def __init__(
        self, registry: RegistryClient, *, allow_downloads: bool, cache_dir: Path | None = None
    ) -> None:
        self.registry = registry
        self.allow_downloads = allow_downloads
        self.cache_dir = cache_dir
        self._running: dict[HubId, asyncio.Task[ImportResult]] = {}

    async def base_version(self, reference: str, field: str = "model") -> pb.Version:
        """The base version `reference` (a hub id) stands for.

        Raises:
            FailedPrecondition: imports are off and it was never imported; it needs remote code.
            And what :func:`import_model` raises.
        """
        hub_id = parse_hub_id(reference, field)
        if not self.allow_downloads:
            found = await find_import(self.registry, hub_id)
            if found is None:
                raise FailedPrecondition(
                    f"{reference} has not been imported, and this gateway does not import from "
                    "model hubs (FORGELINE_GATEWAY_HUB_IMPORTS is off): an operator can run "
                    f"`forgeline import {hub_id}`, or enable the setting",
                    field=field,
                )
            return found
        task = self._running.get(hub_id)
        if task is None:
            task = asyncio.create_task(
                import_model(
                    self.registry, hub_id, cache_dir=self.cache_dir, safetensors_only=True
                ),
                name=f"import {hub_id}",
            )
            self._running[hub_id] = task
            task.add_done_callback(self._forget)
        result = await asyncio.shield(task)
        return result.version

    def _forget(self, task: asyncio.Task[ImportResult]) -> None:
        for hub_id, running in list(self._running.items()):
            if running is task:
                del self._running[hub_id]
        if not task.cancelled() and (error := task.exception()) is not None:
            # Retrieved here too: the caller that started it may have gone away.
            log.warning("hub import failed: %s", error)

    async def close(self) -> None:
        """Stop imports under way (their downloads are kept for the next attempt)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
