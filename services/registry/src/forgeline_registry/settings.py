"""The registry's settings: environment variables under ``FORGELINE_REGISTRY_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from forgeline_kit.settings import ServiceSettings

__all__ = ["MIB", "RegistrySettings"]

MIB = 1 << 20


class RegistrySettings(ServiceSettings):
    """Configuration of the registry service (and of the embedded registry the CLI may run)."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_REGISTRY_")

    storage: Literal["fs", "s3"] = Field(
        "fs", description="Storage driver: fs (a local directory, the embedded default) or s3."
    )
    fs_root: Path = Field(
        Path(".forgeline/registry"),
        description="fs driver: the directory holding blobs and manifests; clients on this host "
        "read and write blobs there directly (local-file grants).",
    )
    s3_endpoint: str = Field(
        "127.0.0.1:9000", description="s3 driver: host:port of the S3 server (MinIO)."
    )
    s3_public_endpoint: str = Field(
        "",
        description="s3 driver: host:port clients use in presigned URLs, when they reach the "
        "store under another name than the registry does; empty means s3_endpoint.",
    )
    s3_secure: bool = Field(False, description="s3 driver: use HTTPS.")
    s3_access_key: str = Field("", description="s3 driver: access key.")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="s3 driver: secret key.")
    s3_region: str = Field("us-east-1", description="s3 driver: region of the bucket.")
    s3_bucket: str = Field(
        "forgeline", min_length=3, description="s3 driver: bucket (created if missing)."
    )
    part_size_bytes: int = Field(
        64 * MIB,
        ge=5 * MIB,
        le=5 * 1024 * MIB,
        description="Default part size of multipart uploads, in bytes (S3: 5 MiB to 5 GiB).",
    )
    grant_ttl_seconds: float = Field(
        3600.0, gt=0, description="How long upload and download grants stay valid."
    )
    upload_ttl_seconds: float = Field(
        86400.0, gt=0, description="How long an upload may stay open before it is discarded."
    )
    request_retention_seconds: float = Field(
        7 * 86400.0, gt=0, description="How long a committed upload answers its idempotency key."
    )
    janitor_interval_seconds: float = Field(
        300.0, gt=0, description="How often expired uploads are discarded."
    )
    verify_concurrency: int = Field(
        2, ge=1, le=64, description="How many blobs a commit hashes at once."
    )
