"""Fixtures of the console's browser tests: a gateway (keys off, on loopback, as `make up` runs
it) serving the tiny model on llama-server with a registry for its files, a second gateway with
keys, and Debian's chromium driven by Playwright.

Fine-tuning jobs are not trained here (tests/pipeline does that): the gateway's pipeline runs on
its own job store with a stand-in trainer, and the tests write a job's events into that store as
the pipeline would, so the job page is seen drawing its curves while events arrive.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from database_urls import database_url
from gateway.harness import Gateway, make_key
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.sync_api import Browser, BrowserContext, Page
from prometheus_client import CollectorRegistry

from forgeline_cli.walkthrough import register_base_model
from forgeline_gateway.api.fine_tuning.serving import FineTuningServing
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.records import JobRecord, JobRequest, Stage
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_gateway.security.keys import Scope
from forgeline_kit.grpc.server import GrpcService
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.trainer.v1 import trainer_pb2
from forgeline_registry.__main__ import build
from forgeline_registry.settings import RegistrySettings

from .browser import Requests, chromium, laptop, screenshot_directory, watched
from .browser import screenshot as save_screenshot

START_DEADLINE_S = 30.0


class RegistryThread:
    """A registry (filesystem store) on a loopback gRPC port, served from its own thread."""

    def __init__(self, root: Path) -> None:
        self.settings = RegistrySettings(
            storage="fs", fs_root=root, grpc_port=0, metrics_port=0, janitor_interval_seconds=3600
        )
        self.target = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        service = GrpcService(
            self.settings, await build(self.settings), collectors=CollectorRegistry()
        )
        await service.start()
        self.target = f"127.0.0.1:{service.grpc_port}"
        self._ready.set()
        await self._stop.wait()
        await service.stop(grace=0)

    def start(self) -> RegistryThread:
        self._thread.start()
        if not self._ready.wait(START_DEADLINE_S) or not self.target:
            raise RuntimeError("the registry did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


class StandInTrainer:
    """What the pipeline asks the trainer while a job trains: its checkpoints, and to cancel."""

    def __init__(self) -> None:
        self.checkpoints: list[trainer_pb2.Checkpoint] = []

    async def ListCheckpoints(  # noqa: N802 (the stub's name)
        self, request: trainer_pb2.ListCheckpointsRequest, **options: Any
    ) -> trainer_pb2.ListCheckpointsResponse:
        return trainer_pb2.ListCheckpointsResponse(checkpoints=self.checkpoints)

    async def CancelJob(  # noqa: N802
        self, request: trainer_pb2.CancelJobRequest, **options: Any
    ) -> trainer_pb2.Job:
        return trainer_pb2.Job(id=request.job_id, state=trainer_pb2.JOB_STATE_CANCELLED)

    def add_checkpoint(self, step: int, loss: float) -> None:
        self.checkpoints.insert(
            0,
            trainer_pb2.Checkpoint(
                id=f"ftckpt-{step}",
                step=step,
                metrics={"train_loss": loss},
                create_time=Timestamp(seconds=int(time.time()) - 300 + step * 10),
            ),
        )


@dataclass
class Console:
    """The gateway the console is served by, what it serves, and its fine-tuning job store."""

    gateway: Gateway
    jobs: JobStore
    trainer: StandInTrainer
    screenshots: Path
    #: A directory the gateway may deploy GGUF files from (MODEL_DIRS), for a test's own files.
    model_dir: Path
    models: list[str] = field(default_factory=list)
    #: The registry the gateway keeps files in (holding the base `tiny-llama`).
    registry_target: str = ""

    @property
    def url(self) -> str:
        return self.gateway.url

    def add_job(self, job_id: str, **fields: Any) -> JobRecord:
        """A job as the pipeline stores it once it is training on the trainer."""
        defaults: dict[str, Any] = {
            "created_at": int(time.time()) - 9 * 60,
            "owner": "forgeline",
            "request": JobRequest(model="tiny-llama", training_file="file-0123", suffix="console"),
            "fine_tuned_model": f"ft:tiny-llama:forgeline:console:{job_id[-8:]}",
            "seed": 7,
            "base_version": "tiny-llama:1",
            "stage": Stage.TRAINING,
            "trainer_state": "TRAINING",
            "trainer_job_id": f"trainer-{job_id}",
        }
        job = JobRecord(id=job_id, **{**defaults, **fields})
        self.jobs.put(job)
        return job

    def add_event(self, job_id: str, message: str, **options: Any) -> None:
        self.jobs.add_event(job_id, options.pop("level", "info"), message, **options)

    def add_metrics(self, job_id: str, step: int, total: int, loss: float, **more: Any) -> None:
        data = {"step": step, "total_steps": total, "train_loss": loss, "epoch": step / total}
        data.update(more)
        self.add_event(job_id, f"Step {step}/{total}", kind="metrics", data=data)

    def screenshot(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        """Save what `page` shows as console-NAME.png in the screenshot directory."""
        return save_screenshot(page, self.screenshots, name, full_page=full_page)


def _deploy(gateway: Gateway, spec: dict[str, Any]) -> None:
    response = httpx.post(f"{gateway.url}/v1/deployments", json=spec, timeout=180, trust_env=False)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="package")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save a screenshot of each page: FORGELINE_CONSOLE_SCREENSHOTS, or a
    directory of the test session."""
    return screenshot_directory(tmp_path_factory.getbasetemp() / "console-screenshots")


@pytest.fixture(scope="package")
def console(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gguf: Path,
    tiny_model: TinyModel,
    screenshot_dir: Path,
) -> Iterator[Console]:
    """A keyless loopback gateway (as `make up` runs it) with the tiny model deployed twice
    (`tiny`, and `tiny-twin` to compare with) and a registry for its files, which holds the
    tiny model as the base `tiny-llama` (with its chat template, for the dataset preview)."""
    work = tmp_path_factory.mktemp("console")
    registry = RegistryThread(work / "registry").start()
    register_base_model(registry.target, tiny_model)
    database = work / "gateway.sqlite3"
    model_dir = work / "models"
    model_dir.mkdir()
    gateway = Gateway(
        database,
        {
            "auth_required": False,
            "registry_target": registry.target,
            "registry_local_files": True,
            "model_dirs": [str(tiny_gguf.parent), str(model_dir)],
        },
    )
    jobs = JobStore.open(database_url(database))
    try:
        gateway.start()
        for name in ("tiny", "tiny-twin"):
            _deploy(
                gateway,
                {
                    "name": name,
                    "backend": "llamacpp",
                    "gguf": str(tiny_gguf),
                    "parallel": 2,
                    "context_size": 512,
                    "metadata": {
                        "base": "tiny-llama",
                        "version": "tiny-llama:2",
                        "quantization": "f16",
                    },
                },
            )
        trainer = StandInTrainer()
        app = gateway.app

        async def fine_tuning() -> None:
            # The pipeline as open_pipeline makes it, with a trainer that only lists and cancels.
            pipeline = Pipeline(
                JobStore.open(database_url(database)),
                trainer=cast(Any, trainer),
                converter=cast(Any, None),
                registry=cast(Any, None),
                files=cast(Any, None),
                deployments=app.state.manager,
                organization="forgeline",
            )
            app.state.fine_tuning = FineTuningServing(pipeline, "forgeline")

        gateway.call(fine_tuning())
        yield Console(
            gateway,
            jobs,
            trainer,
            screenshot_dir,
            model_dir,
            ["tiny", "tiny-twin"],
            registry_target=registry.target,
        )
    finally:
        gateway.stop()
        jobs.close()
        registry.stop()


@dataclass(frozen=True)
class Keyed:
    """A gateway that requires keys, and its keys."""

    gateway: Gateway
    admin_key: str
    inference_key: str


@pytest.fixture(scope="package")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    database = tmp_path_factory.mktemp("console-keyed") / "gateway.sqlite3"
    admin = make_key(database, Scope.ADMIN, Scope.INFERENCE, name="admin")
    inference = make_key(database, Scope.INFERENCE, name="app")
    gateway = Gateway(database, {"key_cache_seconds": 0})
    try:
        gateway.start()
        yield Keyed(gateway, admin, inference)
    finally:
        gateway.stop()


# Package scope: Playwright's synchronous API runs an event loop of its own in this thread,
# which must be gone before other packages' asyncio tests run.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, for the package's tests."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def requests() -> Requests:
    """The requests the test's browser context makes."""
    return Requests()


@pytest.fixture
def context(browser: Browser, requests: Requests) -> Iterator[BrowserContext]:
    """A fresh profile at a laptop's size (no session storage carried over between tests)."""
    with laptop(browser, requests) as made:
        yield made


@pytest.fixture
def page(context: BrowserContext, requests: Requests) -> Iterator[Page]:
    """A page in which a script error or a request off this machine fails the test."""
    with watched(context, requests) as made:
        yield made
