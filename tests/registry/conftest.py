"""Fixtures of the registry suite: stores (filesystem, S3 on loopback, real MinIO when
configured), registries serving them over real gRPC sockets, and clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from forgeline_kit.grpc.server import GrpcService
from forgeline_registry.__main__ import build
from forgeline_registry.settings import RegistrySettings
from forgeline_registry.storage.base import ObjectStore
from forgeline_registry_client.client import RegistryClient

from .s3server import S3Server

STORES = ["fs", "s3", "minio"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-protocol server (moto) on 127.0.0.1, shared by the session; each test gets its own
    bucket."""
    server = S3Server.start()
    yield server
    server.stop()


@dataclass
class StoreConfig:
    """Settings that select one store, fresh for one test."""

    kind: str
    env: dict[str, str]

    def settings(self, **overrides: Any) -> RegistrySettings:
        values: dict[str, Any] = {
            k.removeprefix("FORGELINE_REGISTRY_").lower(): v for k, v in self.env.items()
        }
        values |= {"grpc_port": 0, "metrics_port": 0, "janitor_interval_seconds": 3600}
        values |= overrides
        return RegistrySettings(**values)

    def store(self) -> ObjectStore:
        from forgeline_registry.storage import open_store

        return open_store(self.settings())


def _minio_env() -> dict[str, str] | None:
    endpoint = os.environ.get("MINIO_ENDPOINT")
    if not endpoint:
        return None
    return {
        "FORGELINE_REGISTRY_STORAGE": "s3",
        "FORGELINE_REGISTRY_S3_ENDPOINT": endpoint.removeprefix("http://"),
        "FORGELINE_REGISTRY_S3_ACCESS_KEY": os.environ.get("MINIO_ACCESS_KEY", "minioadmin"),
        "FORGELINE_REGISTRY_S3_SECRET_KEY": os.environ.get("MINIO_SECRET_KEY", "minioadmin"),
    }


def store_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreConfig:
    """A fresh store of `kind`: its own directory or bucket."""
    bucket = f"forgeline-test-{uuid.uuid4().hex[:16]}"
    if kind == "fs":
        return StoreConfig(
            "fs",
            {
                "FORGELINE_REGISTRY_STORAGE": "fs",
                "FORGELINE_REGISTRY_FS_ROOT": str(tmp_path / "registry"),
            },
        )
    if kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return StoreConfig("s3", server.env(bucket))
    env = _minio_env()
    if env is None:
        pytest.skip("set MINIO_ENDPOINT (and MINIO_ACCESS_KEY, MINIO_SECRET_KEY) to run on MinIO")
    return StoreConfig("minio", env | {"FORGELINE_REGISTRY_S3_BUCKET": bucket})


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """Each store in turn: the driver suite runs once per store."""
    return store_config(str(request.param), tmp_path, request)


@pytest.fixture
def fs_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    return store_config("fs", tmp_path, request)


@pytest.fixture
def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    return store_config("s3", tmp_path, request)


class RunningRegistry:
    """A registry served in this process on a real socket."""

    def __init__(self, service: GrpcService, config: StoreConfig) -> None:
        self.service = service
        self.config = config

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    def client(self, **options: Any) -> RegistryClient:
        """A client; it asks for local-file grants unless told otherwise, as one on the
        registry's host does (tests share the filesystem of the registry they start)."""
        return RegistryClient(self.target, **({"accept_local_files": True} | options))


StartRegistry = Callable[..., Any]


@pytest.fixture
async def start_registry() -> AsyncIterator[StartRegistry]:
    """Start registries (replicas, when started on one store); all stop at teardown."""
    running: list[GrpcService] = []

    async def start(config: StoreConfig, **overrides: Any) -> RunningRegistry:
        settings = config.settings(**overrides)
        service = GrpcService(settings, await build(settings), collectors=CollectorRegistry())
        await service.start()
        running.append(service)
        return RunningRegistry(service, config)

    yield start
    for service in running:
        await service.stop(grace=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=STORES)
async def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningRegistry]:
    """A registry on each store in turn, shared by a module's tests (which use distinct model
    names, see `names`): starting and stopping one per test would dominate the suite's time.
    Tests using it run in the module's event loop (``pytest.mark.asyncio(loop_scope="module")``).
    """
    config = store_config(str(request.param), tmp_path_factory.mktemp("store"), request)
    settings = config.settings()
    service = GrpcService(settings, await build(settings), collectors=CollectorRegistry())
    await service.start()
    yield RunningRegistry(service, config)
    await service.stop(grace=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(registry: RunningRegistry) -> AsyncIterator[RegistryClient]:
    """A client of `registry`, accepting local-file grants (it shares the filesystem)."""
    async with registry.client() as client:
        yield client


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Model names unique to the test: ``names("acme/tiny")`` gives ``acme/tiny-<id>``."""
    token = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{token}"
