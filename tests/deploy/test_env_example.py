"""The example files: forgeline.env.example lists every setting of every service, .env.example
every variable compose reads; and the credentials in .env reach only the services that use them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forgeline_converter.settings import ConverterSettings
from forgeline_gateway.settings import GatewaySettings
from forgeline_kit.settings import ServiceSettings
from forgeline_registry.settings import RegistrySettings
from forgeline_trainer.settings import TrainerSettings

from .conftest import CPU_OVERRIDE, ROOT, ResolveCompose

COMPOSE_EXAMPLE = ROOT / ".env.example"
SERVICES_EXAMPLE = ROOT / "forgeline.env.example"
REGENERATE_COMPOSE = "regenerate it: .venv/bin/python deploy/env_example.py compose > .env.example"
REGENERATE_SERVICES = (
    "regenerate it: .venv/bin/python deploy/env_example.py services > forgeline.env.example"
)


def _listed(example: Path) -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example.read_text(), re.MULTILINE))


@pytest.mark.parametrize(
    "settings", [RegistrySettings, TrainerSettings, ConverterSettings, GatewaySettings]
)
def test_every_service_setting_is_listed(settings: type[ServiceSettings]) -> None:
    missing = {settings.env_var(name) for name in settings.model_fields} - _listed(SERVICES_EXAMPLE)
    assert not missing, (
        f"{sorted(missing)} missing from forgeline.env.example; {REGENERATE_SERVICES}"
    )


def test_every_variable_compose_interpolates_is_listed() -> None:
    used: set[str] = set()
    for path in (ROOT / "compose.yaml", CPU_OVERRIDE):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    missing = used - _listed(COMPOSE_EXAMPLE)
    assert not missing, f"{sorted(missing)} missing from .env.example; {REGENERATE_COMPOSE}"


@pytest.mark.parametrize("example", [COMPOSE_EXAMPLE, SERVICES_EXAMPLE], ids=lambda p: p.name)
def test_the_examples_hold_no_password(example: Path) -> None:
    for line in example.read_text().splitlines():
        if re.match(r"#? ?[A-Z_]*(PASSWORD|SECRET_KEY|TOKEN)=", line):
            assert line.endswith("="), line


@pytest.mark.parametrize(
    ("kind", "example", "regenerate"),
    [("compose", COMPOSE_EXAMPLE, REGENERATE_COMPOSE),
     ("services", SERVICES_EXAMPLE, REGENERATE_SERVICES)],
    ids=["compose", "services"],
)  # fmt: skip
def test_the_examples_are_what_the_generator_writes(
    kind: str, example: Path, regenerate: str
) -> None:
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(ROOT / "deploy" / "env_example.py"), kind],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert example.read_text() == done.stdout, regenerate


def test_credentials_in_dot_env_reach_only_the_services_that_use_them(
    resolve_compose: ResolveCompose, tmp_path: Path
) -> None:
    # An operator's project directory: .env with the passwords, forgeline.env with a setting.
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(
        "MINIO_ROOT_PASSWORD=minio-root-secret\nGRAFANA_ADMIN_PASSWORD=grafana-secret\n"
        "FORGELINE_INTERNAL_TOKEN=internal-token-secret\nPOSTGRES_PASSWORD=postgres-secret\n"
    )
    (tmp_path / "forgeline.env").write_text("FORGELINE_GATEWAY_REQUEST_TIMEOUT_SECONDS=7\n")
    services = resolve_compose(project_dir=tmp_path)["services"]

    def holding(secret: str) -> set[str]:
        return {
            name
            for name, service in services.items()
            if secret in (service.get("environment") or {}).values()
        }

    assert holding("minio-root-secret") == {"minio", "minio-init", "registry"}
    assert holding("grafana-secret") == {"grafana"}
    assert holding("internal-token-secret") == {"registry", "trainer", "converter", "gateway"}
    # PostgreSQL's password: to PostgreSQL, and inside the database URL of the services whose
    # state it holds (never to the registry, MinIO or Grafana).
    assert holding("postgres-secret") == {"postgres"}
    in_url = {
        name
        for name, service in services.items()
        if any("postgres-secret" in str(v) for v in (service.get("environment") or {}).values())
    }
    assert in_url == {"postgres", "trainer", "converter", "gateway"}
    for name in ("trainer", "converter", "gateway"):
        url = services[name]["environment"][f"FORGELINE_{name.upper()}_DATABASE_URL"]
        assert url == "postgresql://forgeline:postgres-secret@postgres:5432/forgeline", name
    for name in ("registry", "trainer", "converter", "gateway"):
        environment = services[name]["environment"]
        assert not any(key.endswith("_PASSWORD") for key in environment), name
    assert services["gateway"]["environment"]["FORGELINE_GATEWAY_REQUEST_TIMEOUT_SECONDS"] == "7"
