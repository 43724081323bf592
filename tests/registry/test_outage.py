"""The object store goes away: calls answer UNAVAILABLE with a clear message, and the registry
works again by itself once the store is back, without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline_kit.errors import Unavailable
from forgeline_proto.registry.v1 import registry_pb2 as pb

from .conftest import RunningRegistry, StartRegistry, StoreConfig
from .helpers import write_model_dir
from .s3server import S3Server


async def test_object_store_down_is_unavailable_and_the_registry_recovers(
    start_registry: StartRegistry, tmp_path: Path
) -> None:
    server = S3Server.start()
    try:
        config = StoreConfig("s3", server.env("forgeline-outage"))
        registry: RunningRegistry = await start_registry(config)
        async with registry.client(timeout=20) as client:
            await client.push(write_model_dir(tmp_path / "a"), "m")
            server.stop()
            with pytest.raises(Unavailable, match=r"object store at .* is unreachable"):
                await client.get_model(pb.GetModelRequest(name="m"))
            with pytest.raises(Unavailable, match="unreachable"):
                await client.push(write_model_dir(tmp_path / "b", seed=2), "m")
            server = server.restart()
            model = await client.get_model(pb.GetModelRequest(name="m"))
            assert model.latest_version == 1
            second = await client.push(write_model_dir(tmp_path / "b", seed=2), "m")
            assert second.number == 2
    finally:
        server.stop()
