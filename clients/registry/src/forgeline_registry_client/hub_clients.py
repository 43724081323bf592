"""The hubs' own clients behind one small interface (`HubClient`): ``huggingface_hub`` and
``modelscope_hub`` resolve a hub id to a commit and its files, and download the files chosen;
their failures become Forgeline errors that say what to do (`hub_error`).

The clients are imported lazily (the ``hub`` extra of forgeline-registry-client), so a caller
that never imports by hub id (the trainer, the converter) never needs them.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from forgeline_kit.errors import (
    FailedPrecondition,
    ForgelineError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from forgeline_registry_client.hub_repos import HUGGING_FACE, HubId, RemoteFile, RemoteSnapshot

__all__ = ["HubClient", "hub_client", "hub_error"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- the hubs' clients -----------------------------------------------------------------------


class HubClient(Protocol):
    """What an import needs of a hub's client."""

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


def hub_error(hub_id: HubId, endpoint: str, error: BaseException, cache: Path | None) -> Exception:
    """A hub client's failure as a Forgeline error that says what to do."""
    failed = getattr(error, "failed_files", None)
    if isinstance(failed, dict) and failed:
        # ModelScope tries every file, then reports them all: the first one says why.
        path, first = next(iter(failed.items()))
        cause = hub_error(hub_id, endpoint, first, cache)
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
                "huggingface_hub is not installed here: install forgeline-registry-client[hub]"
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
                "modelscope is not installed here: install forgeline-registry-client[hub]"
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


def hub_client(hub: str) -> HubClient:
    return _HuggingFace() if hub == HUGGING_FACE else _ModelScope()
