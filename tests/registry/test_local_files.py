"""Local-file grants (host paths) go only to a client that asks for them, and only from a
registry on the filesystem driver; an S3 registry never hands out a path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forgeline_kit.errors import FailedPrecondition
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import StartRegistry, StoreConfig
from .helpers import artifact, same_tree, write_model_dir


def _begin(model: str, data: bytes, accept_local_files: bool) -> pb.BeginVersionRequest:
    return pb.BeginVersionRequest(
        model=model,
        create_model=True,
        kind=pb.VERSION_KIND_OTHER,
        artifacts=[artifact("weights.bin", data)],
        transfer=pb.TransferOptions(accept_local_files=accept_local_files),
    )


def _downloads(model: str, accept_local_files: bool) -> pb.GetDownloadGrantsRequest:
    return pb.GetDownloadGrantsRequest(
        version=common_pb2.VersionRef(model=model, version=1),
        transfer=pb.TransferOptions(accept_local_files=accept_local_files),
    )


async def test_a_client_that_does_not_ask_gets_no_local_file_from_a_filesystem_registry(
    start_registry: StartRegistry, fs_store: StoreConfig, tmp_path: Path
) -> None:
    running = await start_registry(fs_store)
    async with running.client(accept_local_files=False) as client:
        with pytest.raises(FailedPrecondition, match="local files"):
            await client.begin_version(_begin("m", b"x" * 100, accept_local_files=False))
        with pytest.raises(FailedPrecondition, match="local files"):
            await client.push(write_model_dir(tmp_path / "a"), "m")
    # Versions pushed by a client on the host are still not read through paths unasked.
    async with running.client(accept_local_files=True) as local:
        await local.push(write_model_dir(tmp_path / "b"), "m")
    async with RegistryClient(running.target) as default:
        assert not default.transfer_options.accept_local_files  # asking is explicit
    async with running.client(accept_local_files=False) as client:
        with pytest.raises(FailedPrecondition, match="local files"):
            await client.get_download_grants(_downloads("m", accept_local_files=False))


async def test_a_client_that_asks_gets_local_files_from_a_filesystem_registry(
    start_registry: StartRegistry, fs_store: StoreConfig, tmp_path: Path
) -> None:
    running = await start_registry(fs_store)
    async with running.client(accept_local_files=True) as client:
        begun = await client.begin_version(_begin("m", b"x" * 100, accept_local_files=True))
        assert [g.WhichOneof("method") for g in begun.grants] == ["local_file"]
        await client.abort_version(pb.AbortVersionRequest(upload_id=begun.upload_id))
        source = write_model_dir(tmp_path / "a")
        await client.push(source, "m")
        grants = await client.get_download_grants(_downloads("m", accept_local_files=True))
        assert {g.WhichOneof("method") for g in grants.grants} == {"local_file"}
        paths = [Path(g.local_file.path) for g in grants.grants]
        assert all(await asyncio.gather(*(asyncio.to_thread(p.is_file) for p in paths)))
        await client.pull("m:1", tmp_path / "out")
        assert same_tree(source, tmp_path / "out")


async def test_an_s3_registry_grants_no_local_file_even_when_asked(
    start_registry: StartRegistry, s3_store: StoreConfig, tmp_path: Path
) -> None:
    running = await start_registry(s3_store)
    async with running.client(accept_local_files=True) as client:
        begun = await client.begin_version(_begin("m", b"x" * 100, accept_local_files=True))
        assert [g.WhichOneof("method") for g in begun.grants] == ["multipart"]
        renewed = await client.renew_upload_grants(
            pb.RenewUploadGrantsRequest(
                upload_id=begun.upload_id, transfer=pb.TransferOptions(accept_local_files=True)
            )
        )
        assert [g.WhichOneof("method") for g in renewed.grants] == ["multipart"]
        await client.abort_version(pb.AbortVersionRequest(upload_id=begun.upload_id))
        source = write_model_dir(tmp_path / "a")
        await client.push(source, "m")
        grants = await client.get_download_grants(_downloads("m", accept_local_files=True))
        assert {g.WhichOneof("method") for g in grants.grants} == {"multipart"}
        assert not any(g.HasField("local_file") for g in grants.grants)
        await client.pull("m:1", tmp_path / "out")
        assert same_tree(source, tmp_path / "out")
