"""The llama.cpp toolchain: the real cached build (made by `make toolchain` before pytest), and the
build machinery itself, exercised on a tiny fake sdist so no test waits ten minutes for a compile.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from forgeline_kit.llamacpp import (
    PIN,
    Pin,
    Toolchain,
    ToolchainError,
    ToolchainNotBuiltError,
    ensure_built,
    locate,
)
from forgeline_kit.llamacpp.gguf_py import subprocess_env
from forgeline_kit.llamacpp.toolchain import CACHE_DIR_ENV, HOME_ENV, MANIFEST_NAME


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - argument lists built by the tests themselves
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "forgeline_kit.llamacpp", *args], env=env)


# --- the real build -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toolchain() -> Toolchain:
    # No skip when missing: `make test` builds first, so a missing build is a real failure.
    return locate()


def test_locate_finds_every_path(toolchain: Toolchain) -> None:
    assert toolchain.version == PIN.version
    for binary in (
        toolchain.llama_quantize,
        toolchain.llama_server,
        toolchain.llama_perplexity,
        toolchain.llama_imatrix,
    ):
        assert binary.is_file()
        assert os.access(binary, os.X_OK)
    assert toolchain.convert_hf_to_gguf.is_file()
    assert toolchain.convert_lora_to_gguf.is_file()
    assert (toolchain.gguf_py / "gguf" / "__init__.py").is_file()


@pytest.mark.parametrize("name", ["llama-server", "llama-perplexity", "llama-imatrix"])
def test_each_binary_runs_and_reports_the_pinned_commit(toolchain: Toolchain, name: str) -> None:
    done = _run([str(toolchain.home / "bin" / name), "--version"])
    assert done.returncode == 0, done.stderr
    assert f"commit {PIN.llama_cpp_commit}" in done.stdout + done.stderr


def test_quantize_runs_and_offers_the_k_and_iq_types(toolchain: Toolchain) -> None:
    # llama-quantize has no --version, and its usage text always exits 1 (tools/quantize).
    done = _run([str(toolchain.llama_quantize), "--help"])
    assert done.returncode == 1, done.stderr
    assert "usage:" in done.stdout
    for quant_type in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS"):
        assert f" {quant_type} " in done.stdout


@pytest.mark.parametrize("script", ["convert_hf_to_gguf", "convert_lora_to_gguf"])
def test_convert_scripts_start_with_the_vendored_gguf(toolchain: Toolchain, script: str) -> None:
    path = getattr(toolchain, script)
    done = _run([sys.executable, str(path), "--help"], env=subprocess_env(toolchain))
    assert done.returncode == 0, done.stderr
    assert "--outtype" in done.stdout


def test_import_gguf_loads_the_toolchains_copy(toolchain: Toolchain) -> None:
    # In a child process: importing gguf here would pin this test process to one copy.
    code = "from forgeline_kit.llamacpp.gguf_py import import_gguf; print(import_gguf().__file__)"
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(toolchain.gguf_py)


def test_build_when_cached_is_a_fast_no_op(toolchain: Toolchain) -> None:
    manifest = toolchain.home / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    started = time.monotonic()
    done = _cli("build")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == toolchain.home
    assert elapsed < 10, f"a cached build took {elapsed:.1f} s"
    assert manifest.stat().st_mtime_ns == before


def test_where_prints_every_path_as_json(toolchain: Toolchain) -> None:
    done = _cli("where")
    assert done.returncode == 0, done.stderr
    paths = json.loads(done.stdout)
    assert paths["version"] == PIN.version
    assert paths["llama_server"] == str(toolchain.llama_server)
    assert paths["gguf_py"] == str(toolchain.gguf_py)


def test_home_override_points_at_a_build(
    toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(toolchain.home))
    monkeypatch.setenv(CACHE_DIR_ENV, "/nonexistent")
    assert locate() == toolchain


# --- nothing built --------------------------------------------------------------------------


def test_missing_cache_says_run_make_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(HOME_ENV, raising=False)
    with pytest.raises(ToolchainNotBuiltError, match="run `make toolchain`"):
        locate()
    done = _cli("where", env={**os.environ})
    assert done.returncode == 1
    assert "run `make toolchain`" in done.stderr
    assert done.stdout == ""


def test_empty_home_override_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    with pytest.raises(ToolchainNotBuiltError, match=HOME_ENV):
        locate()


# --- the build machinery, on a fake sdist ---------------------------------------------------

_FAKE_CMAKE = """\
cmake_minimum_required(VERSION 3.14)
project(fake_llama C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
foreach(name llama-quantize llama-server llama-perplexity llama-imatrix)
    add_executable(${name} tool.c)
    target_compile_definitions(${name} PRIVATE COMMIT="${LLAMA_BUILD_COMMIT}")
endforeach()
"""
_GOOD_C = '#include <stdio.h>\nint main(void) { printf("version: 1 (" COMMIT ")\\n"); }\n'
_BAD_C = "int main(void) { return this_is_not_c; }\n"


def _fake_sdist(directory: Path, *, source: str = _GOOD_C, commit: str = "abc1234") -> Path:
    top, vendor = "fake_pkg-0.0.1", "fake_pkg-0.0.1/vendor/llama.cpp"
    files = {
        f"{top}/CHANGELOG.md": f"## [0.0.2]\n\n- llama.cpp@fff0000\n\n## [0.0.1]\n\n"
        f"- feat: update llama.cpp to ggml-org/llama.cpp@{commit}\n",
        f"{vendor}/CMakeLists.txt": _FAKE_CMAKE,
        f"{vendor}/tool.c": source,
        f"{vendor}/convert_hf_to_gguf.py": "print('convert')\n",
        f"{vendor}/convert_lora_to_gguf.py": "print('lora')\n",
        f"{vendor}/conversion/__init__.py": "",
        f"{vendor}/gguf-py/gguf/__init__.py": "",
        f"{vendor}/models/templates/chat.jinja": "{{ messages }}\n",
        f"{vendor}/models/ggml-vocab-big.gguf": "only needed by llama.cpp's own tests\n",
        f"{vendor}/ggml/src/ggml.c": "/* build input only */\n",
    }
    archive = directory / "fake_pkg-0.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def _pin_for(archive: Path, commit: str = "abc1234") -> Pin:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    return Pin(package_version="0.0.1", sdist_sha256=digest, llama_cpp_commit=commit)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(HOME_ENV, raising=False)
    return tmp_path / "cache" / "llama.cpp"


def _quiet(line: str) -> None:
    pass


def test_build_installs_a_complete_entry_and_keeps_only_what_conversion_needs(
    cache: Path, tmp_path: Path
) -> None:
    archive = _fake_sdist(tmp_path)
    pin = _pin_for(archive)

    first = ensure_built(pin, sdist=archive, jobs=2, log=_quiet)

    assert first.built
    assert first.toolchain == locate(pin)
    assert first.toolchain.home.parent == cache
    assert first.toolchain.home.name.startswith("0.0.1-abc1234-")
    done = _run([str(first.toolchain.llama_server), "--version"])
    assert done.returncode == 0
    assert "abc1234" in done.stdout
    src = first.toolchain.home / "src"
    assert (src / "models" / "templates" / "chat.jinja").is_file()
    assert not (src / "models" / "ggml-vocab-big.gguf").exists()
    assert not (src / "ggml").exists()
    assert [p.name for p in cache.iterdir() if "staging" in p.name] == []

    again = ensure_built(pin, sdist=archive, log=_quiet)
    assert not again.built
    assert again.toolchain == first.toolchain


def test_portable_build_is_found_when_no_native_one_exists(cache: Path, tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path)
    pin = _pin_for(archive)
    result = ensure_built(pin, native=False, sdist=archive, jobs=2, log=_quiet)
    assert result.toolchain.home.name == "0.0.1-abc1234-portable"
    assert not result.toolchain.native
    assert locate(pin) == result.toolchain


def test_concurrent_builds_build_once_and_both_get_the_entry(cache: Path, tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path)
    pin = _pin_for(archive)
    results: list[bool] = []
    homes: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            result = ensure_built(pin, sdist=archive, jobs=1, log=_quiet)
            results.append(result.built)
            homes.append(result.toolchain.home)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(results) == [False, True]
    assert homes[0] == homes[1]


def test_failed_build_leaves_no_entry_and_shows_the_compiler_error(
    cache: Path, tmp_path: Path
) -> None:
    archive = _fake_sdist(tmp_path, source=_BAD_C)
    pin = _pin_for(archive)

    with pytest.raises(ToolchainError, match="this_is_not_c") as failure:
        ensure_built(pin, sdist=archive, jobs=2, log=_quiet)

    assert "no cache entry was created" in str(failure.value)
    assert not [p for p in cache.iterdir() if p.name.startswith("0.0.1-")]
    with pytest.raises(ToolchainNotBuiltError):
        locate(pin)


def test_an_sdist_with_the_wrong_hash_is_refused(cache: Path, tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path)
    pin = Pin(package_version="0.0.1", sdist_sha256="0" * 64, llama_cpp_commit="abc1234")
    with pytest.raises(ToolchainError, match="sha256"):
        ensure_built(pin, sdist=archive, log=_quiet)
    assert not cache.exists() or not any(cache.glob("0.0.1-*"))


def test_an_sdist_vendoring_another_commit_is_refused(cache: Path, tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path, commit="def5678")
    pin = _pin_for(archive, commit="abc1234")
    with pytest.raises(ToolchainError, match=r"vendors llama\.cpp def5678.*update the pin"):
        ensure_built(pin, sdist=archive, log=_quiet)
    assert not any(cache.glob("0.0.1-*"))


def test_a_damaged_entry_is_reported_not_used(cache: Path, tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path)
    pin = _pin_for(archive)
    home = ensure_built(pin, sdist=archive, jobs=2, log=_quiet).toolchain.home
    (home / "bin" / "llama-imatrix").unlink()
    with pytest.raises(ToolchainError, match=r"llama-imatrix.*delete that directory"):
        locate(pin)
