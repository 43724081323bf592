"""Write the two example files: .env.example (every variable compose.yaml reads: credentials,
ports, images) and forgeline.env.example (every Forgeline service setting).

    .venv/bin/python deploy/env_example.py compose > .env.example
    .venv/bin/python deploy/env_example.py services > forgeline.env.example

They are two files because compose hands forgeline.env to every Forgeline service whole, while it
keeps .env to itself and passes each credential only to the service that needs it.

Service settings come from the settings classes themselves (name, default, description), so the
file follows the code; tests/deploy checks that nothing the services or compose read is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from forgeline_converter.settings import ConverterSettings
from forgeline_gateway.settings import GatewaySettings
from forgeline_kit.settings import ServiceSettings
from forgeline_registry.settings import RegistrySettings
from forgeline_trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[1]

SERVICES: dict[str, type[ServiceSettings]] = {
    "registry": RegistrySettings,
    "trainer": TrainerSettings,
    "converter": ConverterSettings,
    "gateway": GatewaySettings,
}

#: Variables compose.yaml interpolates (from .env): (name, value, comment). The four service
#: settings among them are here because compose passes them on from .env (in forgeline.env they
#: would lose to compose.yaml's value). A value of None leaves the line commented out.
COMPOSE_VARIABLES: list[tuple[str, str | None, str]] = [
    (
        "POSTGRES_PASSWORD",
        "",
        "Required: the password of PostgreSQL's user forgeline, whose database holds the "
        "trainer's, converter's and gateway's state. It goes into their database URL as it is, "
        "so use only letters, digits and - . _ ~ (for example openssl rand -hex 24).",
    ),
    ("MINIO_ROOT_USER", "forgeline", "MinIO's root user; the registry uses it as its access key."),
    ("MINIO_ROOT_PASSWORD", "", "Required: MinIO's root password (the registry's secret key)."),
    ("GRAFANA_ADMIN_USER", "admin", "Grafana's admin user."),
    ("GRAFANA_ADMIN_PASSWORD", "", "Required: Grafana's admin password."),
    (
        "FORGELINE_INTERNAL_TOKEN",
        "",
        "Required: the secret every internal gRPC call carries (16+ characters; for example "
        "openssl rand -hex 24).",
    ),
    ("GATEWAY_PUBLISH_PORT", None, "Host port (or ADDRESS:PORT) of the gateway; 8080."),
    ("GRAFANA_PUBLISH_PORT", None, "Loopback port of the Grafana console; 3000."),
    ("FORGELINE_TAG", None, "Tag of the forgeline/* images built and run; latest."),
    ("FORGELINE_BASE_IMAGE", None, "Base of the registry, converter and gateway images."),
    ("FORGELINE_CUDA_BASE_IMAGE", None, "Base of the trainer image (an nvidia/cuda runtime)."),
    ("FORGELINE_EXTRA_CA_FILE", None, "PEM bundle trusted by image builds (a proxy's CA)."),
    ("HF_TOKEN", None, "Hugging Face token for vLLM's gated base models."),
    ("VLLM_MODEL", None, "Base model vLLM serves; Qwen/Qwen2.5-0.5B-Instruct."),
    ("VLLM_SERVED_MODEL_NAME", None, "Name the gateway routes to; the model id by default."),
    ("VLLM_TENSOR_PARALLEL_SIZE", None, "GPUs vLLM splits the model over; 1."),
    ("VLLM_GPU_MEMORY_UTILIZATION", None, "Share of GPU memory vLLM takes; 0.85."),
    ("VLLM_MAX_MODEL_LEN", None, "Context length vLLM serves; 8192."),
    ("VLLM_MAX_LORAS", None, "LoRA adapters vLLM keeps loaded at once; 4."),
    ("VLLM_MAX_LORA_RANK", None, "Largest LoRA rank vLLM accepts; 64."),
    ("OLLAMA_KEEP_ALIVE", None, "How long Ollama keeps an idle model loaded; 10m."),
    ("PROMETHEUS_RETENTION", None, "How long Prometheus keeps samples; 15d."),
    (
        "FORGELINE_REGISTRY_S3_BUCKET",
        None,
        "The registry's bucket; forgeline.",
    ),
    (
        "FORGELINE_TRAINER_DEVICE",
        None,
        "Where the trainer trains; cuda.",
    ),
    ("FORGELINE_GATEWAY_VLLM_URLS", None, 'vLLM servers (JSON list); ["http://vllm:8000"].'),
    ("FORGELINE_GATEWAY_OLLAMA_URL", None, "The Ollama server; http://ollama:11434."),
    ("POSTGRES_IMAGE", None, "Upstream images, pinned; override to mirror them."),
    ("MINIO_IMAGE", None, ""),
    ("VLLM_IMAGE", None, ""),
    ("OLLAMA_IMAGE", None, ""),
    ("PROMETHEUS_IMAGE", None, ""),
    ("GRAFANA_IMAGE", None, ""),
]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(getattr(value, "value", value))


def wired_by_compose() -> dict[str, str]:
    """Variables compose.yaml sets itself in a service's environment (they win over .env)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    wired: dict[str, str] = {}
    for service in compose["services"].values():
        for name, value in (service.get("environment") or {}).items():
            wired[name] = str(value)
    return wired


def render_compose() -> str:
    """The text of .env.example: what compose itself reads (credentials, ports, images)."""
    lines = [
        "# Copy to .env next to compose.yaml and fill in the values marked Required; everything",
        "# else is optional. Compose reads this file itself: no container gets it, each service",
        "# only the values compose.yaml hands it. Service settings go in forgeline.env",
        "# (see forgeline.env.example).",
        "# Generated by `.venv/bin/python deploy/env_example.py compose > .env.example`.",
        "",
        "# --- compose: credentials, ports, images, GPU backends ---",
    ]
    for name, value, comment in COMPOSE_VARIABLES:
        if comment:
            lines.append(f"# {comment}")
        lines.append(f"{name}={value}" if value is not None else f"# {name}=")
    return "\n".join(lines) + "\n"


def render_services() -> str:
    """The text of forgeline.env.example: every setting of every Forgeline service."""
    wired = wired_by_compose()
    lines = [
        "# Optional: copy to forgeline.env next to compose.yaml and uncomment what you change.",
        "# Every Forgeline service reads this file (each only its own FORGELINE_<SERVICE>_*",
        "# prefix, and an unknown name under it stops the service at start). Each gets all of it:",
        "# put secrets in .env and hand them to the one service that needs them in compose.yaml.",
        "# Generated by `.venv/bin/python deploy/env_example.py services > forgeline.env.example`.",
    ]
    for service, settings in SERVICES.items():
        lines += ["", f"# --- {service}: {settings.__name__} ---"]
        for field_name, field in settings.model_fields.items():
            variable = settings.env_var(field_name)
            description = field.description or ""
            if variable in wired and "${" + variable in wired[variable]:
                description += " [set it in .env: compose.yaml passes it on from there]"
            elif variable in wired:
                description += f" [compose.yaml sets {wired[variable]}]"
            lines.append(f"# {description}".rstrip())
            lines.append(f"# {variable}={_default(field)}")
    return "\n".join(lines) + "\n"


RENDERERS = {"compose": render_compose, "services": render_services}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in RENDERERS:
        sys.exit(f"usage: {sys.argv[0]} compose|services  (.env.example | forgeline.env.example)")
    sys.stdout.write(RENDERERS[sys.argv[1]]())
