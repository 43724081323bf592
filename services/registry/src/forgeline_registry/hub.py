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

The hub clients are imported lazily (the ``hub`` extra of forgeline-registry), so the registry
service itself never needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from forgeline_kit.errors import (
    FailedPrecondition,
    ForgelineError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry.client import PushPlan, RegistryClient, TransferProgress
from forgeline_registry.importer import LocalArtifact, local_artifact
from forgeline_registry.names import check_model_name

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

HUGGING_FACE: Final = "huggingface"
MODELSCOPE: Final = "modelscope"
#: The prefix of a hub id -> the hub.
_SCHEMES: Final = {"hf": HUGGING_FACE, "modelscope": MODELSCOPE}
_PREFIX: Final = {hub: scheme for scheme, hub in _SCHEMES.items()}
#: The branch each hub's client downloads when no revision is given.
_DEFAULT_REVISION: Final = {HUGGING_FACE: "main", MODELSCOPE: "master"}

#: Labels of an imported version; `find_import` looks versions up by them.
LABEL_HUB: Final = "hub"
LABEL_REPO: Final = "hub.repo"
LABEL_REVISION: Final = "hub.revision"
LABEL_COMMIT: Final = "hub.commit"

#: Where the CLI's caches live (the llama.cpp build uses the same variable).
CACHE_DIR_ENV: Final = "FORGELINE_CACHE_DIR"

_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,255}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1024 * 1024


# --- hub ids -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubId:
    """A repository of a model hub at a revision, as in ``hf:Qwen/Qwen2.5-0.5B-Instruct@main``."""

    hub: str
    repo_id: str
    #: As given, else the hub's default branch.
    revision: str

    @property
    def scheme(self) -> str:
        """``hf`` or ``modelscope``."""
        return _PREFIX[self.hub]

    def __str__(self) -> str:
        return f"{self.scheme}:{self.repo_id}@{self.revision}"


def is_hub_id(text: str) -> bool:
    """Whether `text` names a hub repository (``hf:...`` or ``modelscope:...``) rather than a
    registry model."""
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in _SCHEMES


def parse_hub_id(text: str, field: str = "model") -> HubId:
    """Parse ``hf:ORG/NAME[@REVISION]`` or ``modelscope:ORG/NAME[@REVISION]``.

    Raises:
        InvalidArgument: `text` is not a hub id of that form (the message shows the form).
    """
    scheme, sep, rest = text.partition(":")
    form = "hf:ORG/NAME[@REVISION] or modelscope:ORG/NAME[@REVISION]"
    if not sep or scheme not in _SCHEMES:
        raise InvalidArgument(f"{field} {text!r} is not a hub id: use {form}", field=field)
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        raise InvalidArgument(
            f"{field} {text!r}: {repo_id!r} is not a repository id: use {form}, for example "
            "hf:Qwen/Qwen2.5-0.5B-Instruct",
            field=field,
        )
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise InvalidArgument(
            f"{field} {text!r}: {revision!r} is not a revision (a branch, tag or commit)",
            field=field,
        )
    hub = _SCHEMES[scheme]
    return HubId(hub, repo_id, revision or _DEFAULT_REVISION[hub])


def default_model_name(repo_id: str) -> str:
    """The registry name of an import: the repository id itself (``Qwen/Qwen2.5-0.5B-Instruct``;
    registry names allow one ``/`` and are case-sensitive), with any character the registry
    does not allow replaced by ``-``."""
    segments = []
    for part in repo_id.split("/"):
        cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", part).lstrip("._-")
        segments.append(cleaned or "model")
    return "/".join(segments)[:128]


def default_cache_dir() -> Path:
    """``$FORGELINE_CACHE_DIR/hub`` (default ``~/.cache/forgeline/hub``)."""
    base = os.environ.get(CACHE_DIR_ENV) or str(Path.home() / ".cache" / "forgeline")
    return Path(base) / "hub"


# --- what a repository holds, and what the model needs ----------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository, as the hub lists it."""

    path: str
    size: int
    #: ``sha256:<hex>`` (Git LFS, ModelScope ``Sha256``), ``git-blob-sha1:<hex>``, or empty.
    hub_digest: str


@dataclass(frozen=True)
class RemoteSnapshot:
    """A repository resolved to one commit, with its files."""

    hub_id: HubId
    commit: str
    #: The endpoint the client talked to, without credentials.
    endpoint: str
    files: tuple[RemoteFile, ...]
    tool_versions: dict[str, str] = field(default_factory=dict)

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


#: Small files read before anything else: they decide what else is needed.
_METADATA_FILES: Final = (
    "config.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
#: Weights and checkpoints in formats Forgeline does not load, or copies of the weights in them.
_OTHER_FORMATS: Final = (
    ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ggml", ".pth", ".pt", ".ckpt",
    ".tflite", ".mlmodel", ".ot", ".nemo", ".npz", ".pkl", ".pickle", ".joblib", ".keras",
    ".tar", ".gz", ".tgz", ".zip", ".7z",
)  # fmt: skip
_MEDIA: Final = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".pdf", ".mp4", ".wav")
#: Python files that make transformers run a repository's code (with an ``auto_map``).
_REMOTE_CODE_FILE = re.compile(
    r"(modeling|configuration|tokenization|processing|image_processing|feature_extraction)_\w+\.py"
)


@dataclass(frozen=True)
class Selection:
    """The files an import downloads, and why each other file is left out."""

    paths: tuple[str, ...]
    skipped: dict[str, str]


def _is_weights_index(name: str) -> bool:
    return name.endswith(".index.json") and (
        "safetensors" in name or name.startswith("pytorch_model")
    )


def select_files(
    files: Iterable[RemoteFile],
    indexes: dict[str, dict[str, Any]] | None = None,
    *,
    trust_remote_code: bool = False,
    safetensors_only: bool = False,
) -> Selection:
    """What the model needs of a repository's files (at its root only).

    Weights: the safetensors files when there are any, else PyTorch ``pytorch_model*.bin``; when
    a weight index (``model.safetensors.index.json``) is given in `indexes`, only the shards its
    ``weight_map`` names (repositories that also ship a ``consolidated.safetensors`` copy keep
    it out), else the single ``model.safetensors`` when present. Every other small file at the
    root (config, tokenizer, generation config, chat template, README, licence) comes along;
    other weight formats, archives, media and ``.gitattributes`` do not; ``*.py`` files only
    with `trust_remote_code`.

    Raises:
        InvalidArgument: the repository has no safetensors or PyTorch weights at its root (with
            `safetensors_only`: no safetensors; PyTorch ``.bin`` files are pickles, which can run
            code when loaded).
    """
    indexes = indexes or {}
    skipped: dict[str, str] = {}
    root: list[RemoteFile] = []
    for item in files:
        if "/" in item.path:
            skipped[item.path] = "in a subdirectory (copies in other layouts, such as original/)"
        else:
            root.append(item)
    names = {f.path for f in root}
    safetensors = sorted(n for n in names if n.endswith(".safetensors"))
    bins = sorted(n for n in names if re.fullmatch(r"pytorch_model.*\.bin", n))
    weights: set[str]
    if safetensors:
        kind, found = "safetensors", safetensors
    elif bins and safetensors_only:
        raise InvalidArgument(
            "the repository's weights are PyTorch pickles (pytorch_model*.bin), which can run code "
            "when loaded: only safetensors weights are imported here; an operator can import it "
            "with `forgeline import`",
            field="model",
        )
    elif bins:
        kind, found = "PyTorch", bins
    else:
        others = sorted(n for n in names if n.endswith(_OTHER_FORMATS))
        raise InvalidArgument(
            "the repository has no safetensors or PyTorch weights at its root"
            + (f" (it holds {', '.join(others[:5])})" if others else "")
            + ": Forgeline imports Hugging Face-layout models; a GGUF file can be pushed with "
            "`forgeline push`",
            field="model",
        )
    index_name = next(
        (
            n
            for n in sorted(names)
            if _is_weights_index(n) and ("safetensors" in n) == bool(safetensors)
        ),
        None,
    )
    if index_name is not None and index_name in indexes:
        weight_map = indexes[index_name].get("weight_map") or {}
        # An index naming none of the files present says nothing: take them all.
        weights = ({str(v) for v in weight_map.values()} & set(found)) or set(found)
        weights.add(index_name)
    elif kind == "safetensors" and "model.safetensors" in names:
        weights = {"model.safetensors"}
    else:
        weights = set(found) | ({index_name} if index_name else set())
    chosen = []
    for item in root:
        name = item.path
        lower = name.lower()
        if name in weights:
            chosen.append(name)
        elif name in found or _is_weights_index(name):
            skipped[name] = f"not among the {kind} weights the model loads"
        elif lower.endswith(".safetensors") or re.fullmatch(r"pytorch_model.*\.bin", lower):
            skipped[name] = "a copy of the weights in another format"
        elif lower.endswith((".bin", *_OTHER_FORMATS)):
            skipped[name] = "weights or state in a format the model does not load from"
        elif lower.endswith(_MEDIA) or name == ".gitattributes":
            skipped[name] = "not needed to load the model"
        elif lower.endswith(".py") and not trust_remote_code:
            skipped[name] = "code (imported only with trust_remote_code)"
        else:
            chosen.append(name)
    return Selection(tuple(sorted(chosen)), dict(sorted(skipped.items())))


def remote_code(files: Iterable[RemoteFile], directory: Path) -> list[str]:
    """Why loading the repository would run its own code (empty when it would not): an
    ``auto_map`` in ``config.json`` or ``tokenizer_config.json`` (read from `directory`), or
    modeling/configuration/tokenization ``.py`` files."""
    reasons = []
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            classes = sorted({str(v) for v in _flatten(auto_map)})
            reasons.append(f"{name} has an auto_map ({', '.join(classes[:4])})")
    code = sorted(f.path for f in files if _REMOTE_CODE_FILE.fullmatch(PurePosixPath(f.path).name))
    if code:
        reasons.append(f"it ships {', '.join(code[:6])}")
    return reasons


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    elif value is not None:
        yield value


# --- the hubs' clients -----------------------------------------------------------------------


class _Hub(Protocol):
    #: The endpoint the client talks to.
    endpoint: str

    def resolve(self, hub_id: HubId) -> RemoteSnapshot: ...

    def download(self, snapshot: RemoteSnapshot, paths: Sequence[str], cache: Path) -> Path:
        """Download `paths` (only those) into `cache`; the directory holding them at their
        paths."""
        ...


def _public_endpoint(url: str) -> str:
    """`url` without credentials (an endpoint may carry ``user:password@``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _hub_error(hub_id: HubId, endpoint: str, error: BaseException, cache: Path | None) -> Exception:
    """A hub client's failure as a Forgeline error that says what to do."""
    failed = getattr(error, "failed_files", None)
    if isinstance(failed, dict) and failed:
        # ModelScope tries every file, then reports them all: the first one says why.
        path, first = next(iter(failed.items()))
        cause = _hub_error(hub_id, endpoint, first, cache)
        if isinstance(cause, ForgelineError):
            cause.message = f"{cause.message} [{len(failed)} file(s) failed, {path} first]"
        return cause
    where = f"{hub_id} on {_public_endpoint(endpoint)}"
    name = type(error).__name__
    detail = str(error).strip().splitlines()
    reason = f"{name}: {detail[0][:300]}" if detail else name
    kept = (
        f"; what was downloaded is kept in {cache}, so running the import again resumes"
        if cache
        else ""
    )
    token = "HF_TOKEN" if hub_id.hub == HUGGING_FACE else "MODELSCOPE_API_TOKEN"
    if name in ("GatedRepoError",):
        return PermissionDenied(
            f"{where} is gated: accept its terms on the hub and set {token} to a token of an "
            f"account that has access ({reason})",
            field="model",
        )
    if name in ("RepositoryNotFoundError", "NotExistError"):
        return NotFound(
            f"{where}: no such repository, or it is private or gated and no valid token was sent "
            f"(set {token}) ({reason})",
            field="model",
        )
    if name in ("RevisionNotFoundError",):
        return NotFound(f"{where}: the repository has no such revision ({reason})", field="model")
    if name in ("AuthenticationError", "PermissionDeniedError"):
        return PermissionDenied(
            f"{where}: the hub refused the credentials (set {token}) ({reason})", field="model"
        )
    if name in ("FileIntegrityError", "FileSizeMismatchError"):
        return FailedPrecondition(f"{where}: a downloaded file failed its check ({reason})")
    return Unavailable(f"cannot download {where} ({reason}){kept}")


class _HuggingFace:
    """``huggingface_hub``: HfApi to resolve and list, snapshot_download to fetch."""

    def __init__(self) -> None:
        try:
            import huggingface_hub
            from huggingface_hub import constants
        except ImportError as error:  # pragma: no cover - the hub extra is missing
            raise FailedPrecondition(
                "huggingface_hub is not installed here: install forgeline-registry[hub]"
            ) from error
        if constants.is_offline_mode():
            raise FailedPrecondition(
                "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set in this process, so the Hugging "
                "Face client may not reach the hub: unset it to import hf: models"
            )
        # Read now rather than at the client's import, so a mirror set later still counts.
        self.endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.version = huggingface_hub.__version__

    def resolve(self, hub_id: HubId) -> RemoteSnapshot:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.endpoint)
        info = api.model_info(hub_id.repo_id, revision=hub_id.revision)
        if not info.sha:
            raise Unavailable(f"{hub_id}: the hub did not name the commit of {hub_id.revision}")
        files = []
        for item in api.list_repo_tree(hub_id.repo_id, revision=info.sha, recursive=True):
            if not isinstance(item, RepoFile):
                continue
            if item.lfs is not None:
                digest = f"sha256:{item.lfs.sha256}"
            else:
                digest = f"git-blob-sha1:{item.blob_id}"
            files.append(RemoteFile(item.path, int(item.size), digest))
        return RemoteSnapshot(
            hub_id,
            info.sha,
            _public_endpoint(self.endpoint),
            tuple(sorted(files, key=lambda f: f.path)),
            {"huggingface_hub": self.version},
        )

    def download(self, snapshot: RemoteSnapshot, paths: Sequence[str], cache: Path) -> Path:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            snapshot.hub_id.repo_id,
            revision=snapshot.commit,
            cache_dir=cache,
            allow_patterns=[glob.escape(p) for p in paths],
            endpoint=self.endpoint,
        )
        return Path(folder)


class _ModelScope:
    """``modelscope_hub`` (what ``modelscope`` 1.40's HubApi and snapshot_download delegate to):
    the revisions and ``repo/files`` listings, then ``download_repo`` of exactly those files."""

    def __init__(self) -> None:
        try:
            import modelscope_hub
            from modelscope_hub import HubApi, HubConfig
        except ImportError as error:  # pragma: no cover - the hub extra is missing
            raise FailedPrecondition(
                "modelscope is not installed here: install forgeline-registry[hub]"
            ) from error
        # A fresh configuration reads MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN and
        # MODELSCOPE_API_TOKEN (or the saved login) now; the client's default one is read once
        # per process.
        self._config = HubConfig()
        self._api = HubApi(config=self._config)
        self.endpoint = str(self._config.endpoint)
        self.version = modelscope_hub.__version__
        self._entries: dict[str, dict[str, Any]] = {}

    def resolve(self, hub_id: HubId) -> RemoteSnapshot:
        from modelscope_hub import HubApi

        # The client's own choice: the configured endpoint, else modelscope.cn or .ai where the
        # repository exists.
        self.endpoint = self._api.resolve_endpoint_for_read(hub_id.repo_id, repo_type="model")
        self._api = HubApi(config=self._config, endpoint=self.endpoint)
        legacy = self._api.legacy
        branches, tags = legacy.list_revisions_detail(hub_id.repo_id, "model")
        known = {str(d.get("Revision")) for d in (*branches, *tags)}
        if hub_id.revision not in known and not re.fullmatch(r"[0-9a-f]{7,40}", hub_id.revision):
            raise NotFound(
                f"{hub_id}: the repository has no revision {hub_id.revision!r} (branches and "
                f"tags: {', '.join(sorted(known)) or 'none'})",
                field="model",
            )
        entries = legacy.list_repo_files(
            repo_id=hub_id.repo_id, repo_type="model", revision=hub_id.revision, recursive=True
        )
        files = []
        newest: tuple[int, str] = (-1, "")
        for entry in entries:
            path = str(entry.get("Path") or entry.get("path") or "")
            if not path or (entry.get("Type") or entry.get("type")) == "tree":
                continue
            self._entries[path] = entry
            sha = str(entry.get("Sha256") or entry.get("sha256") or "").lower()
            digest = f"sha256:{sha}" if _SHA256.fullmatch(sha) else ""
            files.append(RemoteFile(path, int(entry.get("Size") or 0), digest))
            # ModelScope names no repository commit: each file carries the commit that last
            # changed it (`Revision`), so the newest of those is the repository's last change.
            commit = str(entry.get("Revision") or "")
            stamp = int(entry.get("CommittedDate") or 0)
            if commit and (stamp, commit) > newest:
                newest = (stamp, commit)
        return RemoteSnapshot(
            hub_id,
            newest[1],
            _public_endpoint(self.endpoint),
            tuple(sorted(files, key=lambda f: f.path)),
            {"modelscope_hub": self.version},
        )

    def download(self, snapshot: RemoteSnapshot, paths: Sequence[str], cache: Path) -> Path:
        folder = self._api.download_repo(
            snapshot.hub_id.repo_id,
            "model",
            revision=snapshot.hub_id.revision,
            cache_dir=cache,
            file_list=[self._entries[p] for p in paths],
        )
        return Path(folder)


def _client(hub: str) -> _Hub:
    return _HuggingFace() if hub == HUGGING_FACE else _ModelScope()


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
        if _is_weights_index(name) and (directory / name).is_file():
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
        answer = await registry.stub.ListVersions(
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
    client = _client(hub_id.hub)
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
            raise _hub_error(hub_id, client.endpoint, error, cache) from error

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
    first = [n for n in _METADATA_FILES if n in names]
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
