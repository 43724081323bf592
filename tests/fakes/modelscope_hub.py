"""A contract fake of ModelScope's model API (``/api/v1``), for tests only.

``modelscope`` 1.40 delegates its HubApi and snapshot_download to ``modelscope_hub`` 0.5.1 (the
pinned client); this fake serves what that client's ``_legacy_api.py`` (``LegacyClient``) and
``_download.py`` (``DownloadManager``) ask for, following their documented endpoints, and nothing
more. Every JSON answer has the API's envelope
``{"Code": 200, "Data": ..., "Message": "success", "RequestId": ..., "Success": true}``
(``LegacyClient._json_data`` reads ``Data``); failures are HTTP errors (``errors.py``
``raise_for_status`` maps the status: 401 authentication, 403 permission, 404 not found).

* ``GET /api/v1/models/{owner}/{name}/revisions`` (``list_revisions_detail``):
  ``Data.RevisionMap.Branches`` and ``.Tags``, each ``{"Revision", "CreatedAt", ...}``.
* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=True[&Root=]``
  (``list_repo_files``): ``Data.Files``, each file ``{"Name", "Path", "Type": "blob"|"tree",
  "Size", "Sha256", "Revision", "CommittedDate", "CommitMessage", "IsLFS", "Mode"}``, where
  ``Revision`` is the commit that last changed the file (modelscope's ``hub/utils/caching.py``
  keys cached files by it: "'Revision': model_file_info['Revision'],  # commit id").
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`` (``get_download_url``,
  ``download_stream``): the file, with ``Range`` support; ``_download_with_resume`` keeps a
  ``<file>.incomplete`` and resumes it with ``Range: bytes=N-``, expecting 206 and a matching
  ``Content-Range``.
* ``GET /api/v1/models/{owner}/{name}`` (``get_repo_info``): the model's ``Data``.

Anything else (``/api/v1/repos/internalAccelerationInfo``, probed by the downloader inside
Alibaba Cloud) is 404. A repository made with a `token` requires ``Authorization: Bearer
<token>`` (``LegacyClient._headers``) for every call: 401 without one, 403 with another.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .hub_files import Faults, RecordedRequest, Repo, record, serve_bytes

__all__ = ["FakeModelScope"]


def _envelope(data: Any) -> JSONResponse:
    return JSONResponse(
        {
            "Code": 200,
            "Data": data,
            "Message": "success",
            "RequestId": str(uuid.uuid4()),
            "Success": True,
        }
    )


def _error(status: int, message: str) -> JSONResponse:
    body = {"Code": status, "Message": message, "RequestId": str(uuid.uuid4()), "Success": False}
    return JSONResponse(body, status_code=status)


class FakeModelScope:
    """Repositories served the way ModelScope serves them; `requests` records every request."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.created = int(time.time()) - 3600
        self.app = Starlette(
            routes=[
                Route("/api/v1/models/{owner}/{name}/revisions", self.revisions),
                Route("/api/v1/models/{owner}/{name}/repo/files", self.files),
                Route("/api/v1/models/{owner}/{name}/repo", self.download, methods=["GET", "HEAD"]),
                Route("/api/v1/models/{owner}/{name}", self.info),
                Route("/{rest:path}", self.missing, methods=["GET", "HEAD", "POST"]),
            ]
        )

    def add_repo(self, repo_id: str, directory: Path, *, token: str | None = None) -> Repo:
        """Serve `directory` as the `master` branch of `repo_id`."""
        repo = Repo.from_directory(repo_id, directory, branch="master", token=token)
        self.repos[repo_id] = repo
        return repo

    def _repo(self, request: Request) -> Repo | Response:
        record(self.requests, request)
        repo_id = f"{request.path_params['owner']}/{request.path_params['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(404, f"model {repo_id} not found")
        if not repo.authorized(request):
            if "authorization" in request.headers:
                return _error(403, "permission denied")
            return _error(401, "please log in")
        return repo

    def _revision_ok(self, repo: Repo, request: Request) -> bool:
        return request.query_params.get("Revision", repo.branch) in (repo.branch, repo.commit)

    async def revisions(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        branch = {"Revision": repo.branch, "CreatedAt": self.created, "Description": ""}
        return _envelope({"RevisionMap": {"Branches": [branch], "Tags": []}})

    async def files(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        if not self._revision_ok(repo, request):
            return _error(404, f"revision {request.query_params.get('Revision')} not found")
        root = (request.query_params.get("Root") or "").strip("/")
        prefix = f"{root}/" if root else ""
        recursive = request.query_params.get("Recursive", "False").lower() == "true"
        listed: list[dict[str, Any]] = []
        trees: set[str] = set()
        for path, file in repo.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest:
                trees.add(prefix + rest.split("/")[0])
                if not recursive:
                    continue
            listed.append(
                {
                    "Name": path.rsplit("/", 1)[-1],
                    "Path": path,
                    "Type": "blob",
                    "Size": file.size,
                    "Sha256": file.sha256,
                    "Revision": repo.commit,
                    "CommittedDate": self.created,
                    "CommitMessage": "upload",
                    "IsLFS": file.lfs,
                    "Mode": "33188",
                }
            )
        for tree in sorted(trees):
            listed.append(
                {"Name": tree.rsplit("/", 1)[-1], "Path": tree, "Type": "tree", "Size": 0}
            )
        return _envelope({"Files": listed})

    async def download(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        if not self._revision_ok(repo, request):
            return _error(404, f"revision {request.query_params.get('Revision')} not found")
        file = repo.files.get(request.query_params.get("FilePath", ""))
        if file is None:
            return _error(404, "file not found")
        return serve_bytes(request, file, self.faults, {"Content-Type": "application/octet-stream"})

    async def info(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        owner, name = repo.repo_id.split("/")
        return _envelope({"Name": name, "Path": owner, "ChineseName": name, "Visibility": 5})

    async def missing(self, request: Request) -> Response:
        record(self.requests, request)
        return _error(404, "not found")
