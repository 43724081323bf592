"""A registry killed with SIGKILL in the middle of a multi-part upload: the version never
appears, and a retry succeeds (with the same idempotency key, and with a fresh one)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgeline_kit.errors import NotFound
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import StoreConfig
from .helpers import random_file, same_tree
from .process import RegistryProcess

PART = 5 << 20


@pytest.fixture
def processes() -> Iterator[list[RegistryProcess]]:
    started: list[RegistryProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.mark.parametrize("store_kind", ["s3", "fs"], indirect=True)
async def test_a_registry_killed_mid_upload_shows_nothing_and_a_retry_succeeds(
    store_kind: StoreConfig, processes: list[RegistryProcess], tmp_path: Path
) -> None:
    env = store_kind.env | {"FORGELINE_REGISTRY_PART_SIZE_BYTES": str(PART)}
    source = tmp_path / "model"
    random_file(source / "model.safetensors", 3 * PART - 1000)
    (source / "config.json").write_text("{}")

    first = RegistryProcess(env).wait_serving()
    processes.append(first)
    async with RegistryClient(first.target, accept_local_files=True, timeout=20) as client:
        plan, kind = await client.plan(source)
        begin = await client.begin_version(
            pb.BeginVersionRequest(
                model="crashy",
                create_model=True,
                kind=kind,
                artifacts=plan.artifacts,
                request_id="push-1",
                transfer=client.transfer_options,
            )
        )
        weights = next(g for g in begin.grants if g.size_bytes > PART)
        if weights.WhichOneof("method") == "multipart":
            assert len(weights.multipart.parts) == 3
            del weights.multipart.parts[1:]  # one part of three has arrived ...
        await asyncio.to_thread(client.transfers.upload, weights, source / "model.safetensors")
    first.kill()  # ... when the registry dies

    second = RegistryProcess(env).wait_serving()
    processes.append(second)
    async with RegistryClient(second.target, accept_local_files=True, timeout=20) as client:
        listed = await client.list_versions(pb.ListVersionsRequest(model="crashy"))
        assert list(listed.versions) == []
        with pytest.raises(NotFound, match="has no versions"):
            await client.resolve_version(pb.ResolveVersionRequest(reference="crashy"))
        # Retrying with the same idempotency key resumes the same upload, and commits.
        version = await client.push(source, "crashy", request_id="push-1")
        assert version.number == 1
        await client.pull("crashy", tmp_path / "out")
        assert same_tree(source, tmp_path / "out")
        # A fresh push of the same content needs no upload at all, and is the next version.
        again = await client.push(source, "crashy")
        assert again.number == 2
