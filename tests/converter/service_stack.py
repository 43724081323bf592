"""A registry (fs store) and converters served in this process on real sockets, with clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from database_urls import database_url
from prometheus_client import CollectorRegistry

from forgeline_converter.__main__ import build as build_converter
from forgeline_converter.settings import ConverterSettings
from forgeline_kit.grpc.client import make_channel
from forgeline_kit.grpc.server import GrpcService
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.converter.v1 import converter_pb2_grpc
from forgeline_registry.__main__ import build as build_registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient

# Bound on any one conversion in these tests (the tiny model converts in seconds).
CONVERSION_DEADLINE_S = 300.0


@dataclass
class RunningConverter:
    """A converter service and a client stub of it."""

    service: GrpcService
    settings: ConverterSettings
    stub: converter_pb2_grpc.ConverterServiceAsyncStub
    channel: Any

    async def stop(self) -> None:
        await self.channel.close()
        await self.service.stop(grace=0)


@dataclass
class Stack:
    """A registry and the converters started on it."""

    root: Path
    registry_service: GrpcService
    registry: RegistryClient
    converters: list[RunningConverter] = field(default_factory=list)

    @property
    def registry_target(self) -> str:
        return f"127.0.0.1:{self.registry_service.grpc_port}"

    async def start_converter(self, name: str = "converter", **overrides: Any) -> RunningConverter:
        """A converter whose state and work directories are ``root/name`` (other settings in
        ``overrides``): starting a second one with the same name is a restart of the first."""
        chosen: dict[str, Any] = {
            "grpc_port": 0,
            "metrics_port": 0,
            "registry_target": self.registry_target,
            "registry_local_files": True,
            "work_dir": self.root / name / "work",
            "database_url": database_url(self.root / name / "state.db"),
        }
        settings = ConverterSettings(**(chosen | overrides))
        return await self.start_converter_on(settings)

    async def start_converter_on(self, settings: ConverterSettings) -> RunningConverter:
        """A converter with `settings` as they are."""
        service = GrpcService(
            settings, await build_converter(settings), collectors=CollectorRegistry()
        )
        await service.start()
        channel = make_channel(f"127.0.0.1:{service.grpc_port}")
        stub = converter_pb2_grpc.ConverterServiceStub(channel)
        running = RunningConverter(service, settings, stub, channel)
        self.converters.append(running)
        return running

    async def stop(self) -> None:
        for converter in self.converters:
            await converter.stop()
        await self.registry.close()
        await self.registry_service.stop(grace=0)


async def start_stack(root: Path) -> Stack:
    """A registry on an fs store under ``root``."""
    settings = RegistrySettings(
        storage="fs",
        fs_root=root / "registry",
        grpc_port=0,
        metrics_port=0,
        janitor_interval_seconds=3600,
    )
    service = GrpcService(settings, await build_registry(settings), collectors=CollectorRegistry())
    await service.start()
    return Stack(
        root, service, RegistryClient(f"127.0.0.1:{service.grpc_port}", accept_local_files=True)
    )


async def collect(stream: AsyncIterable[pb.ConversionEvent]) -> list[pb.ConversionEvent]:
    """Every event of a stream, within the conversion deadline."""
    async with asyncio.timeout(CONVERSION_DEADLINE_S):
        return [event async for event in stream]
