"""The converter's settings: environment variables under ``FORGELINE_CONVERTER_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit.llamacpp import Toolchain, locate
from forgeline_kit.llamacpp.toolchain import ToolchainNotBuiltError, toolchain_at
from forgeline_kit.settings import (
    DatabaseUrl,
    Port,
    RegistryLocalFiles,
    RenamedSetting,
    ServiceSettings,
)
from forgeline_kit.sqlite import sqlite_path, sqlite_url

__all__ = ["ConverterSettings"]


class ConverterSettings(ServiceSettings):
    """Configuration of the converter service."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_CONVERTER_")
    renamed_settings = (RenamedSetting("state_db", "database_url", sqlite_url),)

    grpc_port: Port = Field(50053, description="gRPC port; 0 picks a free one.")
    metrics_port: Port = Field(9466, description="Port of the /metrics endpoint; 0 picks one.")
    registry_target: str = Field(
        "127.0.0.1:50051", min_length=1, description="host:port of the registry service."
    )
    registry_local_files: RegistryLocalFiles = False
    work_dir: Path = Field(
        Path(".forgeline/converter/work"),
        description="Where sources are downloaded and GGUF files written while a conversion "
        "runs (emptied when it ends); it needs room for a few times the model's size.",
    )
    database_url: DatabaseUrl = Field(
        "sqlite:///.forgeline/converter/state.db",
        description="Database that keeps conversions and their events across restarts: "
        "sqlite:///PATH, relative to the working directory, or sqlite:////ABSOLUTE/PATH, or "
        "postgresql://USER:PASSWORD@HOST/DATABASE (several converters may share one). "
        "Replaces FORGELINE_CONVERTER_STATE_DB (a file path), still read for this release.",
    )
    max_concurrent_conversions: int = Field(
        1, ge=1, le=64, description="How many conversions run at once; the others wait QUEUED."
    )
    llamacpp_home: Path | None = Field(
        None,
        description="A llama.cpp build directory (the kit toolchain layout); unset means the "
        "cached build `make toolchain` made (or FORGELINE_LLAMACPP_HOME).",
    )
    evaluation_context: int = Field(
        128, ge=16, description="Context size of each perplexity window, in tokens."
    )
    registry_timeout_seconds: float = Field(
        60.0, gt=0, description="Deadline of each registry call made by the converter."
    )
    max_tool_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="Wall-clock limit of one run of a conversion's tool work (converting, "
        "quantizing, verifying): past it the worker and its tools are stopped and the conversion "
        "fails, instead of a hung tool holding the converter forever.",
    )
    worker_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="How many times a conversion's tool work runs in all when its worker process "
        "or a llama.cpp tool it started is killed by a signal (the OOM killer, a preempted "
        "node); the downloaded inputs are reused. A tool that fails on its own is not run "
        "again. 1: never retried.",
    )
    worker_retry_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Wait before running killed tool work again; doubled for each further attempt.",
    )
    # Off unless an operator decides otherwise: an admin key registers models, and must not get
    # code execution on the converter through one (docs/security.md).
    trust_remote_code: bool = Field(
        False,
        description="Whether a model that needs its own Python code (an auto_map in config.json "
        "or tokenizer_config.json, or .py files) may be converted: llama.cpp's convert script "
        "imports that code for some architectures. Off, such a model is refused before any tool "
        "runs. Leave it off unless every model in the registry is trusted.",
    )

    @property
    def database_path(self) -> Path:
        """The SQLite file `database_url` names (a ValueError for a PostgreSQL URL)."""
        return sqlite_path(self.database_url)

    def toolchain(self) -> Toolchain:
        """The llama.cpp toolchain these settings select.

        Raises:
            ToolchainNotBuiltError: there is no complete build there.
        """
        if self.llamacpp_home is None:
            return locate()
        found = toolchain_at(self.llamacpp_home.absolute())
        if found is None:
            raise ToolchainNotBuiltError(
                f"{self.env_var('llamacpp_home')}={self.llamacpp_home} holds no llama.cpp build"
            )
        return found
