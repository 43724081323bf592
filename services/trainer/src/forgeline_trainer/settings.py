"""The trainer's settings: environment variables under ``FORGELINE_TRAINER_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit.settings import Port, ServiceSettings

__all__ = ["TrainerSettings"]


class TrainerSettings(ServiceSettings):
    """Configuration of the trainer service."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_TRAINER_")

    # The registry listens on the kit's default gRPC port (50051); the trainer and the converter
    # take the next ones so the embedded default runs all three on one host.
    grpc_port: Port = Field(50052, description="gRPC port; 0 picks a free one.")
    metrics_port: Port = Field(9465, description="Port of the /metrics endpoint; 0 picks one.")
    registry_target: str = Field(
        "127.0.0.1:50051", min_length=1, description="host:port of the registry's gRPC server."
    )
    state_dir: Path = Field(
        Path(".forgeline/trainer"),
        description="Where the job database (jobs.db) and each job's work directory live; a "
        "restarted trainer resumes the jobs it finds there.",
    )
    max_concurrent_jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="How many jobs run at once (on a GPU host, each on GPUs of its own).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (cuda when torch sees a GPU, else cpu), cpu or cuda."
    )
    checkpoint_interval_steps: int = Field(
        50,
        ge=1,
        description="save_steps used when a job sets neither save_strategy nor save_steps: a "
        "restarted trainer resumes from the last checkpoint.",
    )
    poll_interval_seconds: float = Field(
        0.5, gt=0, le=10, description="How often a running job's progress log is read."
    )
    registry_timeout_seconds: float = Field(
        600.0, gt=0, description="Deadline of one registry call (transfers included)."
    )
