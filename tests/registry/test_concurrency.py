"""Many clients push versions of one model at once, through several registry replicas sharing
one store: every push gets its own version, numbers run 1..N with none twice, nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forgeline_proto.registry.v1 import registry_pb2 as pb

from .conftest import RunningRegistry, StartRegistry, StoreConfig
from .helpers import same_tree, sha256_of, write_model_dir

CLIENTS = 12


def digests(directory: Path) -> dict[str, str]:
    return {p.name: sha256_of(p.read_bytes()) for p in directory.iterdir()}


@pytest.mark.parametrize("store_kind", ["fs", "s3", "minio"], indirect=True)
async def test_concurrent_pushes_get_distinct_consecutive_numbers(
    start_registry: StartRegistry, store_kind: StoreConfig, tmp_path: Path
) -> None:
    replicas: list[RunningRegistry] = [await start_registry(store_kind) for _ in range(2)]
    sources = [
        write_model_dir(tmp_path / f"src{i}", seed=i, weights_bytes=64 * 1024)
        for i in range(CLIENTS)
    ]

    async def push(index: int) -> pb.Version:
        async with replicas[index % len(replicas)].client(timeout=60) as client:
            return await client.push(sources[index], "busy", request_id=f"client-{index}")

    versions = await asyncio.gather(*(push(i) for i in range(CLIENTS)))
    numbers = sorted(v.number for v in versions)
    assert numbers == list(range(1, CLIENTS + 1))

    async with replicas[0].client() as client:
        model = await client.get_model(pb.GetModelRequest(name="busy"))
        assert (model.latest_version, model.version_count) == (CLIENTS, CLIENTS)
        assert model.aliases["latest"] == CLIENTS
        # Each number holds exactly what the client that got it pushed.
        for index, version in enumerate(versions):
            stored = await client.get_version(
                pb.GetVersionRequest(model="busy", version=version.number)
            )
            assert {a.path: a.sha256 for a in stored.artifacts} == digests(sources[index])
        for index in (0, CLIENTS - 1):
            await client.pull(f"busy:{versions[index].number}", tmp_path / f"out{index}")
            assert same_tree(sources[index], tmp_path / f"out{index}")
