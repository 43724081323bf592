"""Build the pinned llama.cpp toolchain into its cache entry, once, safely.

A build runs in a hidden staging directory next to the entry and becomes visible with one
``rename``: readers see either nothing or a complete entry. A file lock serialises concurrent
builds of the same entry (``make test`` and ``make demo`` started together); the loser waits and
then finds the winner's entry. If a build fails or is interrupted, the staging directory is kept
so that the next ``build`` resumes the compile instead of starting the ten minutes over.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from forgeline_kit.llamacpp.toolchain import (
    BINARIES,
    MANIFEST_NAME,
    PIN,
    BuildManifest,
    Pin,
    Toolchain,
    ToolchainError,
    cache_root,
    cpu_flags_hash,
    target_home,
    toolchain_at,
)

Log = Callable[[str], None]

# What the cache entry keeps of the vendored tree: the convert scripts and everything they import
# or read at run time. The rest (ggml sources, docs, 75 MB of test vocabularies) is build input.
_KEPT_SOURCES = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "convert_llama_ggml_to_gguf.py",
    "conversion",
    "gguf-py",
    "models/templates",
    "requirements",
    "requirements.txt",
    "LICENSE",
    "licenses",
)
_EXTRACTED_MARKER = ".extracted"
_TAIL_LINES = 40
_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def _cmake_args(pin: Pin, *, native: bool) -> list[str]:
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
        # This llama.cpp no longer links curl (LLAMA_CURL is only a deprecation warning now):
        # downloads go through the bundled cpp-httplib, and without OpenSSL it cannot reach HTTPS
        # model hubs at all, which is what a converter and a local server should be.
        "-DLLAMA_OPENSSL=OFF",
        # The server's web UI would otherwise be fetched from a Hugging Face bucket at build time.
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        # The sdist has no git history, so `--version` would say "unknown" without this.
        f"-DLLAMA_BUILD_COMMIT={pin.llama_cpp_commit}",
    ]


@dataclass(frozen=True)
class BuildResult:
    """The toolchain, and whether this call built it (False: it was already cached)."""

    toolchain: Toolchain
    built: bool
    seconds: float


def ensure_built(
    pin: Pin = PIN,
    *,
    native: bool = True,
    sdist: Path | None = None,
    jobs: int | None = None,
    lock_timeout: float = 3600.0,
    log: Log | None = None,
) -> BuildResult:
    """Build ``pin`` unless a complete build is already there, and return where it is.

    Args:
        pin: the sdist and commit to build.
        native: ``-march=native`` (fast, for this machine) or a portable build (for images).
        sdist: a local copy of the pinned sdist; fetched with pip into the cache when omitted.
            Its sha256 is checked either way.
        jobs: parallel compile jobs; all CPUs this process may use when omitted.
        lock_timeout: seconds to wait for another process building the same entry.
        log: receives progress lines (stderr when omitted).

    Raises:
        ToolchainError: the download, the check or the build failed; the message carries the
            last lines of the compiler output, and no cache entry was created.
    """
    say = log or _stderr
    started = time.monotonic()
    home = target_home(pin, native=native)
    existing = toolchain_at(home)
    if existing is not None:
        return BuildResult(existing, built=False, seconds=time.monotonic() - started)
    home.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(home.parent / f".{home.name}.lock", lock_timeout, say):
        existing = toolchain_at(home)  # built by whoever held the lock before us
        if existing is not None:
            return BuildResult(existing, built=False, seconds=time.monotonic() - started)
        if home.exists() and any(home.iterdir()):
            raise ToolchainError(f"{home} exists but holds no complete build: delete it first")
        archive = _verified_sdist(pin, sdist, say)
        staging = home.parent / f".staging-{home.name}"
        _extract(archive, pin, staging / "src", say)
        args = _cmake_args(pin, native=native)
        say(f"building llama.cpp {pin.version} ({'native' if native else 'portable'}) in {staging}")
        build_started = time.monotonic()
        _compile(staging, args, jobs or len(os.sched_getaffinity(0)), say)
        manifest = BuildManifest(
            package_version=pin.package_version,
            llama_cpp_commit=pin.llama_cpp_commit,
            native=native,
            cpu_flags_hash=cpu_flags_hash() if native else None,
            cmake_args=args,
            build_seconds=round(time.monotonic() - build_started, 1),
            built_at=datetime.now(UTC),
        )
        _install(staging, home, manifest)
        shutil.rmtree(staging, ignore_errors=True)
    toolchain = toolchain_at(home)
    if toolchain is None:  # pragma: no cover - _install writes the manifest it checks
        raise ToolchainError(f"the build finished but {home} is incomplete")
    seconds = time.monotonic() - started
    say(f"llama.cpp {pin.version} built in {seconds:.0f} s: {home}")
    return BuildResult(toolchain, built=True, seconds=seconds)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _exclusive(lock_path: Path, timeout: float, say: Log) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; the kernel drops it if we die."""
    with open(lock_path, "a+b") as handle:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ToolchainError(
                        f"another llama.cpp build still holds {lock_path} after {timeout:.0f} s"
                    ) from None
                if not announced:
                    say(f"waiting for another llama.cpp build to finish ({lock_path})")
                    announced = True
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified_sdist(pin: Pin, sdist: Path | None, say: Log) -> Path:
    """The pinned sdist, from ``sdist`` or the download cache, fetched with pip if absent."""
    if sdist is None:
        downloads = cache_root() / "downloads"
        sdist = downloads / pin.sdist_filename
        if not sdist.exists():
            _download(pin, downloads, say)
    if not sdist.is_file():
        raise ToolchainError(f"llama-cpp-python sdist not found: {sdist}")
    actual = _sha256(sdist)
    if actual != pin.sdist_sha256:
        raise ToolchainError(
            f"{sdist} has sha256 {actual}, but llama-cpp-python {pin.package_version} is pinned "
            f"to {pin.sdist_sha256}: delete the file and build again"
        )
    return sdist


def _download(pin: Pin, downloads: Path, say: Log) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"downloading llama-cpp-python {pin.package_version} sdist from the package index")
    # Into a private directory first, so a half-written file never sits under the final name.
    # pip prepares the sdist's metadata even for a download, in an isolated environment with
    # scikit-build-core from the index (about 10 s): only the tarball is kept.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            tmp,
            f"llama-cpp-python=={pin.package_version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        fetched = Path(tmp) / pin.sdist_filename
        if done.returncode != 0 or not fetched.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-_TAIL_LINES:])
            raise ToolchainError(f"pip could not download {pin.sdist_filename}:\n{tail}")
        os.replace(fetched, downloads / pin.sdist_filename)


def _extract(archive: Path, pin: Pin, dest: Path, say: Log) -> None:
    """Unpack the sdist's ``vendor/llama.cpp`` into ``dest`` (reused if a prior run finished it)."""
    if (dest / _EXTRACTED_MARKER).exists():
        say(f"resuming the build in {dest.parent}")
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        top = members[0].name.split("/", 1)[0]
        prefix = f"{top}/vendor/llama.cpp/"
        vendored = [
            m.replace(name=m.name[len(prefix) :]) for m in members if m.name.startswith(prefix)
        ]
        if not any(m.name == "CMakeLists.txt" for m in vendored):
            raise ToolchainError(f"{archive} has no vendor/llama.cpp/CMakeLists.txt")
        changelog = tar.extractfile(f"{top}/CHANGELOG.md")
        notes = changelog.read().decode("utf-8", "replace") if changelog else ""
        tar.extractall(dest, members=vendored, filter="data")
    _check_commit(notes, pin)
    (dest / _EXTRACTED_MARKER).touch()


def _check_commit(changelog: str, pin: Pin) -> None:
    """The sdist's CHANGELOG must name the pinned llama.cpp commit for the pinned version."""
    section = re.search(
        rf"^## \[{re.escape(pin.package_version)}\]\s*$(.*?)(?=^## \[|\Z)",
        changelog,
        flags=re.MULTILINE | re.DOTALL,
    )
    commits = re.findall(r"llama\.cpp@([0-9a-f]{7,40})", section.group(1) if section else "")
    if not commits or not commits[0].startswith(pin.llama_cpp_commit[:7]):
        found = commits[0] if commits else "no commit"
        raise ToolchainError(
            f"llama-cpp-python {pin.package_version} vendors llama.cpp {found}, "
            f"but the pin says {pin.llama_cpp_commit}: update the pin"
        )


def _compile(staging: Path, cmake_args: list[str], jobs: int, say: Log) -> None:
    src, build = staging / "src", staging / "build"
    configure = ["cmake", "-S", str(src), "-B", str(build), *cmake_args]
    compile_ = ["cmake", "--build", str(build), "--config", "Release", f"-j{jobs}", "--target"]
    for command in (configure, [*compile_, *BINARIES]):
        _run_logged(command, staging / "build.log", say)


def _run_logged(command: list[str], log_path: Path, say: Log) -> None:
    """Run ``command``, appending its output to ``log_path`` and reporting progress percentages."""
    if shutil.which(command[0]) is None:
        raise ToolchainError(f"{command[0]} not found: llama.cpp needs cmake and a C++ compiler")
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    last_percent = -1
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"$ {' '.join(command)}\n")
        with subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                tail.append(line.rstrip())
                match = _PROGRESS.match(line)
                if match and int(match.group(1)) // 10 > last_percent // 10:
                    last_percent = int(match.group(1))
                    say(f"llama.cpp build: {last_percent}%")
            returncode = process.wait()
    if returncode != 0:
        shown = "\n".join(tail)
        raise ToolchainError(
            f"`{' '.join(command[:2])} ...` failed with exit code {returncode}; no cache entry was "
            f"created. The partial build stays in {log_path.parent} and the next build resumes it "
            f"(delete that directory to start clean). Full log: {log_path}\nLast lines:\n{shown}"
        )


def _install(staging: Path, home: Path, manifest: BuildManifest) -> None:
    """Assemble the entry inside ``staging`` and move it to ``home`` in one rename."""
    entry = staging / "entry"
    shutil.rmtree(entry, ignore_errors=True)
    (entry / "bin").mkdir(parents=True)
    for name in BINARIES:
        shutil.copy2(staging / "build" / "bin" / name, entry / "bin" / name)
    for relative in _KEPT_SOURCES:
        source, target = staging / "src" / relative, entry / "src" / relative
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # The manifest marks the entry complete, so it is written last.
    (entry / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    try:
        # rename(2) replaces an empty directory too (a volume mounted at FORGELINE_LLAMACPP_HOME).
        os.rename(entry, home)
    except OSError as error:
        raise ToolchainError(f"could not move the finished build to {home}: {error}") from error
