"""Building the pipeline from the gateway's settings, and closing what it opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.evals.sampling import Sampler
from forgeline_gateway.evals.service import EvalService
from forgeline_gateway.files.service import FileService
from forgeline_gateway.fine_tuning.answers import ServedAnswers
from forgeline_gateway.fine_tuning.files import UploadedDatasets
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.quality import QualityCheck
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_gateway.settings import GatewaySettings
from forgeline_kit.grpc.client import make_channel
from forgeline_proto.converter.v1 import converter_pb2_grpc
from forgeline_proto.trainer.v1 import trainer_pb2_grpc
from forgeline_registry_client.client import RegistryClient
from forgeline_registry_client.hub import HubImporter

__all__ = ["open_pipeline"]


@asynccontextmanager
async def open_pipeline(
    settings: GatewaySettings,
    registry: RegistryClient | None,
    files: FileService,
    deployments: DeploymentManager,
    answers: Sampler | None = None,
    evals: EvalService | None = None,
) -> AsyncIterator[Pipeline | None]:
    """The pipeline, resuming unfinished jobs; None when the trainer, converter or registry is
    not configured (the fine-tuning endpoints then say which setting is missing). With
    `answers` (the gateway's proxy, labelled `answers.METRICS_LABEL`), jobs are served as
    adapters on a shared base where that holds the quality (`deploy.serve`); without it,
    merged. With its `evals`, jobs are evaluated before
    they are deployed (`forgeline.eval`, a validation file)."""
    if registry is None or not settings.trainer_target or not settings.converter_target:
        yield None
        return
    # Jobs outlive any one call: services may restart while a job waits on them, so calls wait
    # for the connection (wait_for_ready) rather than fail at once.
    trainer = make_channel(settings.trainer_target)
    converter = make_channel(settings.converter_target)
    store = JobStore.open(
        settings.database_url, holder=settings.replica_name(), lease_seconds=settings.lease_seconds
    )
    # Base models named by hub id (hf:ORG/NAME): imported only when the operator allows it.
    hub = HubImporter(
        registry, allow_downloads=settings.hub_imports, cache_dir=settings.hub_cache.absolute()
    )
    pipeline = Pipeline(
        store,
        trainer=trainer_pb2_grpc.TrainerServiceStub(trainer),
        converter=converter_pb2_grpc.ConverterServiceStub(converter),
        registry=registry,
        files=UploadedDatasets(files),
        deployments=deployments,
        organization=settings.organization,
        hub=hub,
        attempts=settings.fine_tuning_attempts,
        retry_seconds=settings.fine_tuning_retry_seconds,
        adapter_check=ServedAnswers(files, answers) if answers is not None else None,
        quality=QualityCheck(files, evals) if evals is not None else None,
    )
    try:
        await pipeline.start()
        yield pipeline
    finally:
        await pipeline.close()
        await hub.close()
        await trainer.close()
        await converter.close()
        store.close()
