"""A contract fake of the Hugging Face Hub's HTTP API, for tests only.

It serves what ``huggingface_hub`` 1.33 (the pinned client) asks for when it resolves a revision,
lists a repository and downloads files, and nothing more. Each endpoint follows the client's source,
which is the published contract of the Hub's API (https://huggingface.co/docs/hub/api):

* ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}``
  (``hf_api.py`` ``HfApi.model_info``): the model's JSON with ``id`` and ``sha`` (the commit the
  revision resolves to) and ``siblings``. An unknown repository answers 401 with
  ``X-Error-Code: RepoNotFound`` (the Hub answers 401 rather than 404 to anonymous callers), an
  unknown revision 404 with ``X-Error-Code: RevisionNotFound`` (``utils/_http.py``
  ``hf_raise_for_status``).
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=...&expand=...`` (``HfApi.
  list_repo_tree``): a JSON list of ``{"type": "file"|"directory", "oid", "size", "path"}``, with
  ``"lfs": {"oid": <sha256>, "size", "pointerSize"}`` for files stored in Git LFS, whose ``oid`` is
  then the Git id of the pointer file. One page (no ``Link`` header).
* ``HEAD|GET /{repo_id}/resolve/{revision}/{path}`` (``file_download.py`` ``get_hf_file_metadata``,
  ``hf_hub_download``): every answer carries ``X-Repo-Commit``. A file in Git answers 200 with
  ``ETag: "<git blob id>"`` and the content. An LFS file answers ``302`` to the CDN on another host
  (the client follows only redirects that stay on the Hub's host) with
  ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``, which the client prefers to ``ETag``. A
  missing file answers 404 ``X-Error-Code: EntryNotFound``; a gated repository without a valid
  ``Authorization: Bearer`` token 401 (none) or 403 (another) with ``X-Error-Code: GatedRepo``.
* The CDN (``GET /cdn/{sha256}`` on ``localhost`` where the Hub is ``127.0.0.1``): the content,
  with ``Range`` support (``http_get`` resumes a dropped download with ``Range: bytes=N-``).

No Xet headers are sent, so the client downloads over plain HTTP (``file_download.py`` uses Xet
only when the metadata carries ``X-Xet-Hash``).
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .hub_files import Faults, RecordedRequest, Repo, RepoFile, record, serve_bytes

__all__ = ["FakeHfHub"]

#: The host name the CDN is reached at: another host than the Hub's 127.0.0.1, as on the Hub.
CDN_HOST = "localhost"


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    return JSONResponse(
        {"error": message},
        status_code=status,
        headers={"X-Error-Code": code, "X-Error-Message": message, **headers},
    )


class FakeHfHub:
    """Repositories served the way the Hub serves them; `requests` records every request."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.app = Starlette(routes=[Route("/{rest:path}", self.dispatch, methods=["GET", "HEAD"])])

    def add_repo(self, repo_id: str, directory: Path, *, token: str | None = None) -> Repo:
        """Serve `directory` as the `main` branch of `repo_id` (gated behind `token` if given)."""
        repo = Repo.from_directory(repo_id, directory, branch="main", token=token)
        self.repos[repo_id] = repo
        return repo

    async def dispatch(self, request: Request) -> Response:
        record(self.requests, request)
        # The client percent-encodes a revision as one segment (`refs%2Fpr%2F1`).
        segments = [unquote(s) for s in request.scope["raw_path"].decode().split("/")[1:]]
        if segments[:1] == ["cdn"] and len(segments) == 2:
            return self._cdn(request, segments[1])
        if segments[:2] == ["api", "models"] and len(segments) >= 4:
            repo_id, rest = "/".join(segments[2:4]), segments[4:]
            repo = self.repos.get(repo_id)
            if repo is None:
                return _error(401, "RepoNotFound", "Repository not found")
            if not rest:
                return self._model_info(repo, repo.branch)
            if rest[0] == "revision" and len(rest) == 2:
                return self._model_info(repo, rest[1])
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(request, repo, rest[1], "/".join(rest[2:]))
        if len(segments) >= 5 and segments[2] == "resolve":
            repo_id = "/".join(segments[:2])
            return self._resolve(request, repo_id, segments[3], "/".join(segments[4:]))
        return _error(404, "NotFound", "Sorry, we can't find the page you are looking for.")

    def _commit(self, repo: Repo, revision: str) -> str | None:
        return repo.commit if revision in (repo.branch, repo.commit) else None

    def _model_info(self, repo: Repo, revision: str) -> Response:
        commit = self._commit(repo, revision)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return JSONResponse(
            {
                "_id": commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit,
                "lastModified": stamp,
                "createdAt": stamp,
                "private": False,
                "disabled": False,
                "gated": "manual" if repo.token else False,
                "tags": ["safetensors", "llama"],
                "library_name": "transformers",
                "siblings": [{"rfilename": path} for path in repo.files],
            }
        )

    def _tree(self, request: Request, repo: Repo, revision: str, under: str) -> Response:
        if self._commit(repo, revision) is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        prefix = f"{under}/" if under else ""
        entries: list[dict[str, object]] = []
        directories: set[str] = set()
        for path, file in repo.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest:
                directories.add(prefix + rest.split("/")[0])
                if not recursive:
                    continue
            entries.append(self._tree_entry(file))
        for directory in sorted(directories):
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": directory})
        return JSONResponse(entries)

    @staticmethod
    def _tree_entry(file: RepoFile) -> dict[str, object]:
        if not file.lfs:
            return {"type": "file", "oid": file.git_oid, "size": file.size, "path": file.path}
        pointer = RepoFile(file.path, file.lfs_pointer)
        return {
            "type": "file",
            "oid": pointer.git_oid,
            "size": file.size,
            "lfs": {"oid": file.sha256, "size": file.size, "pointerSize": pointer.size},
            "path": file.path,
        }

    def _resolve(self, request: Request, repo_id: str, revision: str, path: str) -> Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(401, "RepoNotFound", "Repository not found")
        commit = self._commit(repo, revision)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if not repo.authorized(request):
            status = 401 if "authorization" not in request.headers else 403
            return _error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                **{"X-Repo-Commit": commit},
            )
        file = repo.files.get(path)
        if file is None:
            return _error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        if file.lfs:
            pointer = RepoFile(path, file.lfs_pointer)
            port = request.url.port
            return Response(
                f"Found. Redirecting to http://{CDN_HOST}:{port}/cdn/{file.sha256}",
                status_code=302,
                headers={
                    "Location": f"http://{CDN_HOST}:{port}/cdn/{file.sha256}",
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{file.sha256}"',
                    "X-Linked-Size": str(file.size),
                    "ETag": f'"{pointer.git_oid}"',
                },
            )
        headers = {"X-Repo-Commit": commit, "ETag": f'"{file.git_oid}"'}
        return serve_bytes(request, file, self.faults, headers)

    def _cdn(self, request: Request, sha256: str) -> Response:
        for repo in self.repos.values():
            for file in repo.files.values():
                if file.lfs and file.sha256 == sha256:
                    return serve_bytes(request, file, self.faults, {"ETag": f'"{sha256}"'})
        return Response("NoSuchKey", status_code=404)
