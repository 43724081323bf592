"""The gateway's model cache: one directory per registry version, never shared by two names, and
never served once its files changed on the host."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgeline_cli.stack import LocalStack
from forgeline_gateway.deployments.artifacts import RegistryArtifacts
from forgeline_kit.errors import InvalidArgument
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry_client.client import RegistryClient


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry process holding `acme/llama:1` and `acme--llama:1`, whose names the old
    cache layout (`/` written as `--`) sent to one directory."""
    stack = LocalStack(tmp_path_factory.mktemp("registry"))
    stack.start("registry")
    files = tmp_path_factory.mktemp("files")

    async def push(name: str) -> None:
        directory = files / name.replace("/", "_")
        directory.mkdir()
        (directory / "weights.bin").write_bytes(f"weights of {name}".encode() * 1000)
        async with RegistryClient(stack.registry_target, accept_local_files=True) as client:
            await client.push(directory, name, kind=rpb.VERSION_KIND_OTHER)

    try:
        for name in ("acme/llama", "acme--llama"):
            asyncio.run(push(name))
        yield stack.registry_target
    finally:
        stack.stop("registry")


def _cached(registry: str, cache: Path, reference: str) -> Path:
    async def fetch() -> Path:
        async with RegistryClient(registry, accept_local_files=True) as client:
            return await RegistryArtifacts(client, cache).version_directory(reference, "x")

    return asyncio.run(fetch())


def test_two_names_never_share_a_cache_directory(registry: str, tmp_path: Path) -> None:
    slash = _cached(registry, tmp_path, "acme/llama:1")
    dashes = _cached(registry, tmp_path, "acme--llama:1")

    assert slash != dashes
    assert (slash / "weights.bin").read_bytes().startswith(b"weights of acme/llama")
    assert (dashes / "weights.bin").read_bytes().startswith(b"weights of acme--llama")


@pytest.mark.parametrize("change", ["edit", "add"])
def test_a_cached_version_changed_on_the_host_is_pulled_again(
    registry: str, tmp_path: Path, change: str
) -> None:
    directory = _cached(registry, tmp_path, "acme/llama:1")
    original = (directory / "weights.bin").read_bytes()
    if change == "edit":
        (directory / "weights.bin").write_bytes(b"something else")
    else:
        (directory / "extra.gguf").write_bytes(b"planted")

    again = _cached(registry, tmp_path, "acme/llama:1")

    assert again == directory
    assert (again / "weights.bin").read_bytes() == original
    assert sorted(p.name for p in again.iterdir()) == ["weights.bin"]


def test_an_intact_cached_version_is_reused(registry: str, tmp_path: Path) -> None:
    directory = _cached(registry, tmp_path, "acme/llama:1")
    inode = (directory / "weights.bin").stat().st_ino

    assert _cached(registry, tmp_path, "acme/llama:1") == directory
    assert (directory / "weights.bin").stat().st_ino == inode  # not pulled a second time


def test_a_reference_that_is_not_a_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        RegistryArtifacts(None, tmp_path).cache_directory("a/b/../../etc:1", "registry_gguf")
