"""The gateway's settings: the kit's `ServiceSettings` under the ``FORGELINE_GATEWAY_`` prefix.

Read them with ``forgeline_kit.settings.load_settings(GatewaySettings)``, which names every
malformed or unknown variable. The gateway is an HTTP service: the gRPC fields inherited from the
kit are unused, while ``METRICS_HOST`` and ``METRICS_PORT`` place its ``/metrics`` listener, a
port of its own as every service has, never the public API port.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Final

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from forgeline_kit.settings import (
    DatabaseUrl,
    Port,
    RegistryLocalFiles,
    RenamedSetting,
    ServiceSettings,
)
from forgeline_kit.sqlite import sqlite_url

__all__ = ["GatewaySettings"]


#: The names a loopback gateway without keys answers to (a browser's Host header for it).
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this host only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GatewaySettings(ServiceSettings):
    """How the gateway listens, whom it lets in, and how it treats its backends."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_GATEWAY_", frozen=True, extra="ignore")
    renamed_settings = (RenamedSetting("database", "database_url", sqlite_url),)

    http_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the HTTP API listens on; 0.0.0.0 (or ::) inside a container.",
    )
    http_port: Port = Field(
        8080, description="HTTP port of the OpenAI-compatible API; 0 picks one."
    )
    # After the registry's, trainer's and converter's (9464-9466), so the four services run on
    # one host with their defaults; containers use 9464 (the image sets it).
    metrics_port: Port = Field(9467, description="Port of the /metrics endpoint; 0 picks one.")
    database_url: DatabaseUrl = Field(
        "sqlite:///.forgeline/gateway.sqlite3",
        description="Database holding API keys, deployments, fine-tuning jobs, files and evals "
        "(the one owner of shared state): sqlite:///PATH, relative to the working directory, or "
        "sqlite:////ABSOLUTE/PATH for one gateway; postgresql://USER:PASSWORD@HOST/DATABASE for "
        "state every gateway replica shares. Replaces FORGELINE_GATEWAY_DATABASE (a file "
        "path), still read for this release.",
    )
    auth_required: bool = Field(
        True,
        description="Require a Bearer API key on every API call. false is refused unless HTTP_HOST "
        "is a loopback address: without keys, whoever reaches the port is an admin.",
    )
    trusted_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the API answers to (JSON list; '*.example.com' matches "
        "subdomains). Empty: any host when keys are required, else the loopback names only "
        "(localhost, 127.0.0.1, ::1), so a web page cannot reach a keyless gateway through DNS "
        "rebinding.",
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a verified API key is trusted before the database is read again; "
        "a revoked key stops working within this time on every replica.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger is 413."
    )
    max_file_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1,
        description="Largest file the Files API accepts (`POST /v1/files`); larger is 413.",
    )
    # Uploaded datasets are checked as a stream, a record at a time in a worker thread: these
    # bound what one upload costs to check (memory follows the record, time the record count).
    max_dataset_records: int = Field(
        1_000_000,
        ge=1,
        description="Most records (JSONL lines, JSON list elements, eval rows) an uploaded file "
        "may hold; more is a 400 naming this setting.",
    )
    max_dataset_record_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Most bytes one record of an uploaded file may take (a JSONL line without "
        "its newline, one element of a JSON list); longer is a 400 naming the line and this "
        "setting. 4 MiB is about a million tokens, past any context a model is trained with.",
    )
    request_timeout_seconds: float = Field(
        600.0,
        gt=0,
        allow_inf_nan=False,
        description="Longest wait for a backend's answer (or, when streaming, for its next chunk).",
    )
    connect_timeout_seconds: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="Longest wait to connect to a backend."
    )
    max_in_flight_per_instance: int = Field(
        64,
        ge=1,
        description="Requests one backend instance whose slots are unknown (an attached server "
        "that does not report them) may have in flight; past that the client gets 429 with "
        "Retry-After.",
    )
    queue_per_instance: int = Field(
        4,
        ge=0,
        le=10_000,
        description="Requests one backend instance may hold waiting past its slots (llama-server's "
        "--parallel), so a slot that frees starts the next at once; past slots + this the "
        "client gets 429 with Retry-After at once, instead of waiting in the server's queue.",
    )
    retry_after_seconds: int = Field(
        1, ge=1, description="The Retry-After a client gets when every instance is full."
    )
    adapter_wait_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="How long a request for an adapter not loaded on its vLLM base waits for "
        "one of the loaded adapters to become idle (unloaded to make room) when all of its "
        "base's max_loaded_adapters have requests in flight; then it gets 429 with Retry-After.",
    )
    deployment_sync_seconds: float = Field(
        5.0,
        ge=0.2,
        le=300,
        allow_inf_nan=False,
        description="How often a gateway places the deployments other replicas sharing its "
        "database created, and removes those they deleted: a deployment created on one replica "
        "is served by the others within this (plus their time to place it).",
    )
    lease_seconds: float = Field(
        15.0,
        ge=3,
        le=300,
        allow_inf_nan=False,
        description="How long a gateway replica's hold on a fine-tuning job or an eval run lasts "
        "without renewal (renewed every third of it): when a replica dies, another takes its "
        "work over this long after its last renewal. Replicas' clocks must agree to well within "
        "it.",
    )
    unhealthy_seconds: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long an instance that refused a connection is skipped by routing.",
    )
    llama_server_threads: int = Field(
        2, ge=1, description="CPU threads of each llama-server process the gateway starts."
    )
    llama_server_start_seconds: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="How long a starting llama-server may take to report healthy.",
    )
    vllm_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of the vLLM servers deployments use by default (JSON list).",
    )
    vllm_image: str = Field(
        "vllm/vllm-openai:v0.11.0",
        min_length=1,
        description="The vLLM image of the containers started for `registry_model` deployments "
        "(pinned; pull it on the Docker host beforehand).",
    )
    vllm_model_mount: str | None = Field(
        None,
        min_length=1,
        description="The Docker volume or host directory holding MODEL_CACHE as the Docker "
        "host sees it, mounted read-only into vLLM containers (default: MODEL_CACHE's absolute "
        "path, for a gateway on the Docker host).",
    )
    vllm_network: str | None = Field(
        None,
        min_length=1,
        description="Docker network the vLLM containers join, reached by container name (a "
        "gateway in a container); unset: their port is published on the host's 127.0.0.1.",
    )
    vllm_start_seconds: float = Field(
        1800.0,
        gt=0,
        allow_inf_nan=False,
        description="How long a new vLLM container may take to answer /health (loading weights).",
    )
    ollama_url: str | None = Field(
        None, description="Base URL of the Ollama server deployments use by default."
    )
    backend_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts deployments may name in 'urls'/'url' besides loopback and the hosts "
        "of VLLM_URLS and OLLAMA_URL (JSON list): the gateway calls no other server.",
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories besides MODEL_CACHE whose GGUF files deployments may name by "
        "path ('gguf', 'lora'; JSON list): no other file of the host can be served or pushed.",
    )
    registry_target: str | None = Field(
        None,
        description="host:port of the registry's gRPC API: files, fine-tuning jobs and "
        "deployments of registered versions need it.",
    )
    registry_local_files: RegistryLocalFiles = False
    trainer_target: str | None = Field(
        None, description="host:port of the trainer's gRPC API (fine-tuning jobs need it)."
    )
    converter_target: str | None = Field(
        None, description="host:port of the converter's gRPC API (fine-tuning jobs need it)."
    )
    fine_tuning_attempts: int = Field(
        10,
        ge=1,
        le=100,
        description="How many times in a row a fine-tuning job's stage is run when a service it "
        "needs (the trainer, the converter, the registry behind them) cannot be reached or does "
        "not answer in time, before the job fails; the count starts again whenever the job moves "
        "on. A failed job can be retried: POST /v1/fine_tuning/jobs/{id}/retry.",
    )
    fine_tuning_retry_seconds: float = Field(
        2.0,
        ge=0,
        le=600,
        description="Wait before the first of those retries; doubled for each further one, at "
        "most 60 s.",
    )
    model_cache: Path = Field(
        Path(".forgeline/gateway-models"),
        description="Where registry versions deployed on llama.cpp, Ollama or vLLM containers "
        "are cached on this host.",
    )
    organization: str = Field(
        "forgeline",
        min_length=1,
        max_length=64,
        description="The `organization_id` of fine-tuning jobs, and their owner in "
        "`fine_tuned_model` when authentication is off.",
    )
    hub_imports: bool = Field(
        False,
        description="Let a fine-tuning job name its base model by hub id (hf:ORG/NAME[@REV], "
        "modelscope:ORG/NAME[@REV]): the gateway imports it into the registry first, or uses "
        "an import of the same commit. Off, only models imported earlier (`forgeline import`) "
        "are found by hub id. The hub clients' own variables apply (HF_ENDPOINT, HF_TOKEN, "
        "MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, HTTPS_PROXY); a repository that needs "
        "its own code to load, or whose weights are PyTorch pickles, is never imported here.",
    )
    hub_cache: Path = Field(
        Path(".forgeline/gateway-hub"),
        description="Download cache of hub imports; what a failed import downloaded stays "
        "there, so the next attempt resumes.",
    )

    @field_validator("auth_required")
    @classmethod
    def _keys_off_only_on_loopback(cls, required: bool, info: ValidationInfo) -> bool:
        host = info.data.get("http_host", "127.0.0.1")
        if not required and not is_loopback(host):
            raise ValueError(
                f"API keys can be switched off only on a loopback address, and the gateway "
                f"listens on {host}: anyone who reaches it would be an admin. Create a key "
                "(forgeline-gateway keys create NAME --scope inference --scope admin) and keep "
                "keys required, or listen on 127.0.0.1"
            )
        return required

    def allowed_hosts(self) -> tuple[str, ...]:
        """The Host header values the API answers to ("*" for any)."""
        if self.trusted_hosts:
            return tuple(self.trusted_hosts)
        return ("*",) if self.auth_required else LOOPBACK_HOSTS

    def replica_name(self) -> str:
        """This replica's name in the leases it holds: its host and model cache, which one
        gateway process holds at a time, so a restarted replica takes its own leases back at
        once."""
        return f"{socket.gethostname()}:{self.model_cache.absolute()}"
