"""Run the trainer service: ``forgeline-trainer`` (settings from FORGELINE_TRAINER_*)."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry

from forgeline_kit.grpc.server import Service, run_grpc_service
from forgeline_kit.settings import redact_database_url
from forgeline_kit.state_lock import hold_state_dir
from forgeline_kit.subprocesses import offline_env
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from forgeline_registry_client.client import RegistryClient
from forgeline_trainer.grpc_api import TrainerServicer
from forgeline_trainer.jobs.store import JobStore
from forgeline_trainer.llamafactory.chat_template import preload_in_background
from forgeline_trainer.llamafactory.combinations import DeviceKind
from forgeline_trainer.metrics import TrainerMetrics
from forgeline_trainer.service import Trainer
from forgeline_trainer.settings import TrainerSettings

__all__ = ["build", "detect_device", "main", "visible_gpus"]

log = logging.getLogger("forgeline_trainer")


def detect_device(setting: str) -> tuple[DeviceKind, str]:
    """The device kind the checks use and the device name jobs report."""
    if setting == "cpu":
        return "cpu", "cpu"
    if setting == "auto":
        import torch

        if not torch.cuda.is_available():
            return "cpu", "cpu"
    return "cuda", "cuda:0"


def visible_gpus(device_kind: DeviceKind) -> int:
    """How many GPUs jobs may use: those torch sees (``CUDA_VISIBLE_DEVICES`` applied)."""
    if device_kind == "cpu":
        return 0
    import torch

    return int(torch.cuda.device_count())


async def build(
    settings: TrainerSettings, collectors: CollectorRegistry = REGISTRY
) -> list[Service]:
    """The trainer service on the state directory `settings` name, unfinished jobs resumed;
    its metrics go to ``collectors`` (those the kit's ``/metrics`` serves)."""
    device_kind, device = detect_device(settings.device)
    state_dir = settings.state_dir.resolve()
    settings = settings.model_copy(update={"state_dir": state_dir})
    # Before recovery: a second trainer here would start a second run of every job.
    ownership = hold_state_dir(state_dir, "forgeline-trainer")
    store = JobStore.open(settings.jobs_database_url)

    def registry_client() -> RegistryClient:
        return RegistryClient(
            settings.registry_target,
            accept_local_files=settings.registry_local_files,
            timeout=settings.registry_timeout_seconds,
        )

    trainer = Trainer(
        settings,
        store,
        device_kind=device_kind,
        device=device,
        env=offline_env(state_dir / "hf-home"),
        registry=registry_client,
        metrics=TrainerMetrics(collectors, store.count_by_state()),
        gpus=visible_gpus(device_kind),
    )
    trainer.recover()
    preload_in_background()
    log.info(
        "trainer on %s, state in %s, jobs in %s",
        device,
        state_dir,
        redact_database_url(settings.jobs_database_url),
    )

    async def on_stopped() -> None:
        store.close()
        ownership.release()

    descriptor = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
    return [
        Service.of(
            TrainerServicer(trainer),
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            descriptor,
            on_draining=trainer.stop,
            on_stopped=on_stopped,
        )
    ]


def main() -> None:
    """Entry point of the ``forgeline-trainer`` console script."""
    run_grpc_service(TrainerSettings, build)


if __name__ == "__main__":
    main()
