"""The converter's settings: environment variables under ``FORGELINE_CONVERTER_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit.llamacpp import Toolchain, locate
from forgeline_kit.llamacpp.toolchain import ToolchainNotBuiltError, toolchain_at
from forgeline_kit.settings import Port, ServiceSettings

__all__ = ["ConverterSettings"]


class ConverterSettings(ServiceSettings):
    """Configuration of the converter service."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_CONVERTER_")

    grpc_port: Port = Field(50053, description="gRPC port; 0 picks a free one.")
    metrics_port: Port = Field(9466, description="Port of the /metrics endpoint; 0 picks one.")
    registry_target: str = Field(
        "127.0.0.1:50051", min_length=1, description="host:port of the registry service."
    )
    work_dir: Path = Field(
        Path(".forgeline/converter/work"),
        description="Where sources are downloaded and GGUF files written while a conversion "
        "runs (emptied when it ends); it needs room for a few times the model's size.",
    )
    state_db: Path = Field(
        Path(".forgeline/converter/state.db"),
        description="SQLite file that keeps conversions and their events across restarts.",
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
