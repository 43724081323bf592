"""A registry and trainers served on real sockets from a background event loop, for the
trainer service tests (which talk to them with plain synchronous gRPC clients)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from database_urls import database_url
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from forgeline_kit.errors import NotFound
from forgeline_kit.grpc.server import GrpcService
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_proto.trainer.v1 import trainer_pb2 as pb
from forgeline_proto.trainer.v1 import trainer_pb2_grpc
from forgeline_registry.__main__ import build as build_registry
from forgeline_registry.settings import RegistrySettings
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.__main__ import build as build_trainer
from forgeline_trainer.settings import TrainerSettings

T = TypeVar("T")

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


class Stack:
    """An event loop in a thread hosting a registry (filesystem store) and trainers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.registry = self.call(self._serve_registry())
        self.registry_address = self.registry.grpc_address

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Run ``coroutine`` on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _serve_registry(self) -> GrpcService:
        settings = RegistrySettings(
            storage="fs",
            fs_root=self.root / "registry",
            grpc_port=0,
            metrics_port=0,
            janitor_interval_seconds=3600,
        )
        services = await build_registry(settings)
        service = GrpcService(settings, services, collectors=CollectorRegistry())
        await service.start()
        return service

    def start_trainer(self, state_dir: Path, **overrides: Any) -> Trainer:
        """A trainer on ``state_dir`` (CPU unless ``device`` is overridden), served on a free
        port."""
        values: dict[str, Any] = {
            "device": "cpu",
            "registry_local_files": True,
            "poll_interval_seconds": 0.2,
            "shutdown_grace_seconds": 1,
            # A trainer restarted on the same state_dir finds its jobs again (make test-postgres
            # keeps them on PostgreSQL).
            "database_url": database_url(state_dir / "jobs.db"),
        }

        async def serve() -> GrpcService:
            settings = TrainerSettings(
                registry_target=self.registry_address,
                state_dir=state_dir,
                grpc_port=0,
                metrics_port=0,
                **(values | overrides),
            )
            collectors = CollectorRegistry()
            service = GrpcService(
                settings, await build_trainer(settings, collectors), collectors=collectors
            )
            await service.start()
            return service

        return Trainer(self, self.call(serve()))

    def push(self, directory: Path, model: str, kind: rpb.VersionKind.ValueType) -> rpb.Version:
        """Push ``directory`` as the next version of ``model``."""

        async def push() -> rpb.Version:
            async with RegistryClient(self.registry_address, accept_local_files=True) as client:
                return await client.push(directory, model, kind=kind)

        return self.call(push())

    def push_dataset(self, directory: Path, model: str, records: list[Any]) -> rpb.Version:
        """Push ``records`` as ``<model>.json``, the only file of a dataset version."""
        directory.mkdir(parents=True)
        (directory / f"{model}.json").write_text(json.dumps(records), encoding="utf-8")
        return self.push(directory, model, rpb.VERSION_KIND_DATASET)

    def push_jsonl(self, directory: Path, model: str, records: list[Any]) -> rpb.Version:
        """Push ``records`` as ``<model>.jsonl``, the only file of a dataset version."""
        directory.mkdir(parents=True)
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (directory / f"{model}.jsonl").write_text(lines, encoding="utf-8")
        return self.push(directory, model, rpb.VERSION_KIND_DATASET)

    def versions(self, model: str) -> list[rpb.Version]:
        """Every version of ``model`` (empty when the model does not exist)."""

        async def listed() -> list[rpb.Version]:
            async with RegistryClient(self.registry_address) as client:
                try:
                    answer = await client.list_versions(
                        rpb.ListVersionsRequest(model=model, view=rpb.VERSION_VIEW_FULL)
                    )
                except NotFound:
                    return []
            return list(answer.versions)

        return self.call(listed())

    def close(self) -> None:
        """Stop the registry and the loop."""
        self.call(self.registry.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Trainer:
    """A served trainer and a synchronous stub for it."""

    def __init__(self, stack: Stack, service: GrpcService) -> None:
        self.stack = stack
        self.service = service
        self.channel = grpc.insecure_channel(service.grpc_address)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    def metrics(self) -> str:
        """The text of the trainer's ``/metrics`` page, fetched over HTTP."""
        url = f"http://127.0.0.1:{self.service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode("utf-8")
        return text

    def stop(self) -> None:
        """Shut the trainer down as SIGTERM would (running jobs are stopped, not failed)."""
        self.channel.close()
        self.stack.call(self.service.stop(grace=1))

    def watch(self, job_id: str, timeout: float, after: int = 0) -> Iterator[pb.JobEvent]:
        """The job's events until it ends (or ``timeout``)."""
        request = pb.WatchJobRequest(job_id=job_id, after_sequence=after)
        yield from self.stub.WatchJob(request, timeout=timeout)

    def wait_for(
        self, job_id: str, states: tuple[pb.JobState.ValueType, ...], timeout: float
    ) -> pb.Job:
        """Poll the job until it is in one of ``states``; fails past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.stub.GetJob(pb.GetJobRequest(job_id=job_id))
            if job.state in states:
                return job
            assert job.state not in TERMINAL, f"job ended {pb.JobState.Name(job.state)}: {job}"
            assert time.monotonic() < deadline, f"still {pb.JobState.Name(job.state)}"
            time.sleep(0.1)


def struct(values: dict[str, Any]) -> Struct:
    """``values`` as a protobuf Struct."""
    message = Struct()
    message.update(values)
    return message


def dataset_input(
    version: rpb.Version,
    name: str = "",
    dataset_format: pb.DatasetFormat.ValueType = pb.DATASET_FORMAT_ALPACA,
) -> pb.DatasetInput:
    """A dataset input for the only file of ``version`` (alpaca unless told)."""
    suffix = "json" if dataset_format == pb.DATASET_FORMAT_ALPACA else "jsonl"
    return pb.DatasetInput(
        name=name,
        source=common_pb2.ArtifactRef(
            version=common_pb2.VersionRef(model=version.model, version=version.number),
            path=f"{version.model}.{suffix}",
        ),
        format=dataset_format,
    )
