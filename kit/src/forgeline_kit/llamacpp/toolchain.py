"""The pinned llama.cpp toolchain: what is pinned, where a build lives, and how to find it.

llama.cpp is built from the source that the ``llama-cpp-python`` sdist on PyPI vendors
(``vendor/llama.cpp``), so one pinned, hash-checked download gives the binaries, the convert
scripts and gguf-py of exactly the same version. A build is cached outside the work tree::

    $FORGELINE_CACHE_DIR (default ~/.cache/forgeline)/llama.cpp/
        <package version>-<llama.cpp commit>-<cpu flags hash | "portable">/
            bin/       llama-quantize, llama-server, llama-perplexity, llama-imatrix
            src/       convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/
            forgeline-llamacpp.json   the build manifest, written last

``FORGELINE_LLAMACPP_HOME`` replaces that whole path with one directory of the same layout (a
container image ships its own build there). Building lives in :mod:`.build`; this module only reads.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

CACHE_DIR_ENV = "FORGELINE_CACHE_DIR"
HOME_ENV = "FORGELINE_LLAMACPP_HOME"
MANIFEST_NAME = "forgeline-llamacpp.json"
BINARIES = ("llama-quantize", "llama-server", "llama-perplexity", "llama-imatrix")
PORTABLE = "portable"


class ToolchainError(RuntimeError):
    """The llama.cpp toolchain cannot be used, built or found; the message says what to do."""


class ToolchainNotBuiltError(ToolchainError):
    """No complete build exists where one was looked for."""


@dataclass(frozen=True)
class Pin:
    """One pinned ``llama-cpp-python`` sdist and the llama.cpp commit it vendors.

    The commit is pinned too, rather than read from the sdist, so that :func:`locate` can name the
    cache entry without the 75 MB download; the build checks it against the sdist's CHANGELOG.
    """

    package_version: str
    sdist_sha256: str
    llama_cpp_commit: str

    @property
    def sdist_filename(self) -> str:
        return f"llama_cpp_python-{self.package_version}.tar.gz"

    @property
    def version(self) -> str:
        """The version string recorded on everything this toolchain makes."""
        return f"{self.package_version}-{self.llama_cpp_commit}"


PIN = Pin(
    package_version="0.3.36",
    sdist_sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    llama_cpp_commit="0c1e57098",
)


class BuildManifest(BaseModel):
    """What a cache entry holds and how it was made; its presence marks the entry complete."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    package_version: str
    llama_cpp_commit: str
    native: bool
    cpu_flags_hash: str | None
    cmake_args: list[str]
    build_seconds: float
    built_at: datetime

    @property
    def version(self) -> str:
        return f"{self.package_version}-{self.llama_cpp_commit}"


@dataclass(frozen=True)
class Toolchain:
    """Paths of one complete llama.cpp build; every path exists when :func:`locate` returns it."""

    home: Path
    version: str
    llama_cpp_commit: str
    native: bool
    llama_quantize: Path
    llama_server: Path
    llama_perplexity: Path
    llama_imatrix: Path
    convert_hf_to_gguf: Path
    convert_lora_to_gguf: Path
    gguf_py: Path

    def to_json(self) -> str:
        """The paths as JSON (what ``forgeline-llamacpp where`` prints)."""
        return _TOOLCHAIN_ADAPTER.dump_json(self, indent=2).decode()


_TOOLCHAIN_ADAPTER = TypeAdapter(Toolchain)


def cache_root() -> Path:
    """The directory that holds every cached llama.cpp build."""
    base = os.environ.get(CACHE_DIR_ENV) or str(Path.home() / ".cache" / "forgeline")
    return Path(base).expanduser() / "llama.cpp"


def cpu_flags_hash() -> str:
    """A short hash of this CPU's feature flags.

    Native builds use ``-march=native``, so a cache shared between machines (a network home, a
    mounted volume) must not hand one machine's binaries to a CPU that lacks those instructions.
    """
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                # x86 calls them "flags", arm64 "Features"; every core lists the same set.
                if key.strip() in ("flags", "Features"):
                    flags = sorted(set(value.split()))
                    break
    except OSError:
        pass
    text = f"{platform.machine()}:{' '.join(flags)}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def entry_name(pin: Pin = PIN, *, native: bool = True) -> str:
    """The cache entry's directory name for ``pin`` built natively or portably."""
    return f"{pin.version}-{cpu_flags_hash() if native else PORTABLE}"


def home_override() -> Path | None:
    """The directory ``FORGELINE_LLAMACPP_HOME`` names, if set."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser().absolute() if value else None


def target_home(pin: Pin = PIN, *, native: bool = True) -> Path:
    """Where a build of ``pin`` goes (and is looked for first)."""
    override = home_override()
    if override is not None:
        return override
    return cache_root() / entry_name(pin, native=native)


def read_manifest(home: Path) -> BuildManifest | None:
    """The manifest of a complete entry at ``home``, or None if there is none."""
    try:
        text = (home / MANIFEST_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return BuildManifest.model_validate_json(text)
    except ValidationError as error:
        raise ToolchainError(
            f"{home / MANIFEST_NAME} is not a build manifest ({error.error_count()} errors): "
            "delete that directory and run `make toolchain`"
        ) from error


def toolchain_at(home: Path) -> Toolchain | None:
    """The toolchain at ``home`` if it is complete, otherwise None."""
    manifest = read_manifest(home)
    if manifest is None:
        return None
    bin_dir, src = home / "bin", home / "src"
    toolchain = Toolchain(
        home=home,
        version=manifest.version,
        llama_cpp_commit=manifest.llama_cpp_commit,
        native=manifest.native,
        llama_quantize=bin_dir / "llama-quantize",
        llama_server=bin_dir / "llama-server",
        llama_perplexity=bin_dir / "llama-perplexity",
        llama_imatrix=bin_dir / "llama-imatrix",
        convert_hf_to_gguf=src / "convert_hf_to_gguf.py",
        convert_lora_to_gguf=src / "convert_lora_to_gguf.py",
        gguf_py=src / "gguf-py",
    )
    paths = [
        toolchain.llama_quantize,
        toolchain.llama_server,
        toolchain.llama_perplexity,
        toolchain.llama_imatrix,
        toolchain.convert_hf_to_gguf,
        toolchain.convert_lora_to_gguf,
        toolchain.gguf_py / "gguf" / "__init__.py",
    ]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise ToolchainError(
            f"the llama.cpp build at {home} is damaged (missing {', '.join(missing)}): "
            "delete that directory and run `make toolchain`"
        )
    return toolchain


def locate(pin: Pin = PIN) -> Toolchain:
    """Find the built toolchain: ``FORGELINE_LLAMACPP_HOME`` if set, else the native then the
    portable cache entry for ``pin``.

    Raises:
        ToolchainNotBuiltError: nothing complete was found; the message says to run
            ``make toolchain``.
    """
    override = home_override()
    if override is not None:
        candidates = [override]
        where = f"{HOME_ENV}={override}"
    else:
        candidates = [target_home(pin, native=True), target_home(pin, native=False)]
        where = " or ".join(str(path) for path in candidates)
    for home in candidates:
        toolchain = toolchain_at(home)
        if toolchain is not None:
            return toolchain
    raise ToolchainNotBuiltError(
        f"llama.cpp {pin.version} is not built (looked in {where}): run `make toolchain` "
        "(or `forgeline-llamacpp build`), which takes about 10 minutes on 2 cores the first time"
    )
