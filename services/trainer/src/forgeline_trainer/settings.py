"""The trainer's settings: environment variables under ``FORGELINE_TRAINER_``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit.settings import (
    Port,
    RegistryLocalFiles,
    ServiceSettings,
    check_database_url,
)
from forgeline_kit.sqlite import sqlite_path, sqlite_url
from forgeline_trainer.llamafactory.policy import (
    DEFAULT_MAX_JOB_SECONDS,
    DEFAULT_MAX_STEPS_CAP,
    JobPolicy,
    NetworkReporter,
)

__all__ = ["TrainerSettings"]


def _empty_or_database_url(value: str) -> str:
    return value if value == "" else check_database_url(value)


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
    registry_local_files: RegistryLocalFiles = False
    state_dir: Path = Field(
        Path(".forgeline/trainer"),
        description="Where each job's work directory (and, unless DATABASE_URL says otherwise, "
        "the job database jobs.db) lives; a restarted trainer resumes the jobs it finds there.",
    )
    database_url: Annotated[str, AfterValidator(_empty_or_database_url)] = Field(
        "",
        description="Database of the jobs, their events and checkpoints: sqlite:///PATH, "
        "relative to the working directory, or sqlite:////ABSOLUTE/PATH, or "
        "postgresql://USER:PASSWORD@HOST/DATABASE. Empty: jobs.db in "
        "STATE_DIR (sqlite:///<STATE_DIR>/jobs.db), so setting STATE_DIR alone moves both.",
    )
    max_concurrent_jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="How many jobs run at once (on a GPU host, each on GPUs of its own).",
    )
    max_queued_jobs: int = Field(
        100,
        ge=1,
        description="How many jobs may wait for a slot; a job submitted beyond that is refused "
        "(RESOURCE_EXHAUSTED, a 429 through the gateway) instead of growing the queue without "
        "end.",
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
    run_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="How many times a job's llamafactory-cli run (train or export) is started "
        "in all when it is killed by a signal (the OOM killer, a preempted node): training "
        "resumes from its last checkpoint. A run that fails on its own (an exception, bad "
        "arguments, NaN) is not run again. 1: never retried.",
    )
    run_retry_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Wait before running a killed run again; doubled for each further attempt.",
    )
    # What jobs may do beyond the allow-list (llamafactory/policy.py): off unless an operator
    # decides otherwise, because an admin key must not get code execution or the network.
    trust_remote_code: bool = Field(
        False,
        description="Whether jobs may set trust_remote_code: true, which runs Python code shipped "
        "with a base model on the trainer. Leave it off unless every model in the registry is "
        "trusted.",
    )
    allowed_reporters: list[NetworkReporter] = Field(
        default_factory=list,
        description="Loggers that send a run's data off the host which jobs may name in report_to "
        '(JSON list, for example ["wandb"]; their credentials go in the trainer\'s environment). '
        "none and tensorboard are always allowed.",
    )
    max_steps_cap: int = Field(
        DEFAULT_MAX_STEPS_CAP,
        ge=1,
        description="The most optimizer steps a job may run: a larger max_steps is refused at "
        "submission, and a job whose epochs come to more is stopped.",
    )
    max_job_seconds: float = Field(
        DEFAULT_MAX_JOB_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="Wall-clock limit of a job, from leaving the queue to the end of its merge; a "
        "job may ask for less (time_limit). A job past it is stopped and fails.",
    )

    @property
    def database_path(self) -> Path:
        """The job database: the SQLite file `database_url` names, or jobs.db in `state_dir`
        (a ValueError for a PostgreSQL URL)."""
        return sqlite_path(self.database_url) if self.database_url else self.state_dir / "jobs.db"

    @property
    def jobs_database_url(self) -> str:
        """The job database's URL: `database_url`, or jobs.db in `state_dir`."""
        return self.database_url or sqlite_url(self.state_dir / "jobs.db")

    def job_policy(self) -> JobPolicy:
        """What these settings let a job do."""
        return JobPolicy(
            trust_remote_code=self.trust_remote_code,
            allowed_reporters=frozenset(self.allowed_reporters),
            max_steps_cap=self.max_steps_cap,
            max_job_seconds=self.max_job_seconds,
        )
