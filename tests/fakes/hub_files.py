"""What the two model-hub fakes share: a repository read from a directory, and its files served
over HTTP with byte ranges and injected faults. For tests only.

A repository is one commit of a directory's files, held in memory (the fakes serve tiny models).
Files are served as HTTP/1.1 defines ranges (RFC 9110 section 14): ``Accept-Ranges: bytes``;
``Range: bytes=N-`` or ``bytes=N-M`` answers 206 with ``Content-Range: bytes N-M/TOTAL``; a range
starting at or past the end answers 416 with ``Content-Range: bytes */TOTAL``.

Faults, per file path: `drop` closes the connection after some bytes of the body on the next GETs
(the ``Content-Length`` promised more), `corrupt` serves one byte changed while the listing keeps
the true digests. Every request is recorded (`requests`) with its method, path, query and headers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: Suffixes a Hugging Face repository stores with Git LFS, after the `.gitattributes` the Hub
#: writes into every new model repository (plus any file over 10 MB, which the Hub requires in
#: LFS).
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".gguf", ".pth", ".pt", ".ckpt",
    ".model", ".tflite", ".ot", ".pkl", ".npz", ".zip", ".tar", ".gz",
)  # fmt: skip
LFS_THRESHOLD = 10 * 1024 * 1024


@dataclass(frozen=True)
class RepoFile:
    """One file of a fake repository and its identifiers."""

    path: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        """Git's blob id: SHA-1 of ``blob <size>\\0`` and the content."""
        return hashlib.sha1(b"blob %d\0" % self.size + self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES) or self.size > LFS_THRESHOLD

    @property
    def lfs_pointer(self) -> bytes:
        """The Git LFS pointer file stored in Git instead of the content (LFS spec v1)."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()


@dataclass
class Repo:
    """One commit of a repository: its files, by path."""

    repo_id: str
    commit: str
    files: dict[str, RepoFile]
    branch: str = "main"
    #: Requests must carry ``Authorization: Bearer <token>`` to download files.
    token: str | None = None

    @classmethod
    def from_directory(
        cls, repo_id: str, directory: Path, *, branch: str, token: str | None = None
    ) -> Repo:
        files = {
            p.relative_to(directory).as_posix(): RepoFile(
                p.relative_to(directory).as_posix(), p.read_bytes()
            )
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }
        commit = hashlib.sha1(
            "".join(f"{path}:{f.sha256}\n" for path, f in files.items()).encode()
        ).hexdigest()
        return cls(repo_id, commit, files, branch, token)

    def authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get("authorization") == f"Bearer {self.token}"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Faults:
    """Faults to inject into file downloads, by repository path."""

    #: path -> (bytes sent before the connection closes, how many more GETs to cut).
    drops: dict[str, list[int]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)

    def drop(self, path: str, after_bytes: int, times: int = 1) -> None:
        self.drops[path] = [after_bytes, times]

    def cut_at(self, path: str) -> int | None:
        """Where to cut this GET of `path`, if it is to be cut (counts it)."""
        plan = self.drops.get(path)
        if not plan or plan[1] <= 0:
            return None
        plan[1] -= 1
        return plan[0]


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _CutResponse(Response):
    """Headers promising the whole body, then `cut` bytes of it, then the connection closes
    (the ASGI app returns without finishing the response, which the server answers by closing)."""

    def __init__(self, body: bytes, cut: int, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(body, status_code=status_code, headers=headers)
        self._cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {"type": "http.response.body", "body": self.body[: self._cut], "more_body": True}
        )


def serve_bytes(
    request: Request,
    file: RepoFile,
    faults: Faults,
    headers: dict[str, str],
) -> Response:
    """`file`'s content (or its range) for a GET or HEAD, with `headers`, faults applied."""
    data = file.data
    if file.path in faults.corrupt and data:
        data = bytes([data[0] ^ 0xFF]) + data[1:]
    total = len(data)
    headers = {**headers, "Accept-Ranges": "bytes"}
    status, start, end = 200, 0, total - 1
    match = _RANGE.fullmatch(request.headers.get("range", "").strip())
    if match:
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else total - 1, total - 1)
        if start >= total or start > end:
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{total}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    body = data[start : end + 1]
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    cut = faults.cut_at(file.path)
    if cut is not None and cut < len(body):
        return _CutResponse(body, cut, status, headers)
    return Response(body, status_code=status, headers=headers)


def record(requests: list[RecordedRequest], request: Request) -> None:
    requests.append(
        RecordedRequest(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
        )
    )


def gets_of(requests: list[RecordedRequest], marker: str) -> list[RecordedRequest]:
    """The GETs whose path or query names `marker` (a file path or digest)."""
    return [
        r
        for r in requests
        if r.method == "GET" and (marker in r.path or marker in r.query.values())
    ]
