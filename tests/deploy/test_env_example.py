""".env.example: every setting of every service, and every variable compose reads."""

from __future__ import annotations

import re

import pytest

from forgeline_converter.settings import ConverterSettings
from forgeline_gateway.settings import GatewaySettings
from forgeline_kit.settings import ServiceSettings
from forgeline_registry.settings import RegistrySettings
from forgeline_trainer.settings import TrainerSettings

from .conftest import CPU_OVERRIDE, ROOT

ENV_EXAMPLE = ROOT / ".env.example"
REGENERATE = "regenerate it: .venv/bin/python deploy/env_example.py > .env.example"


def _listed() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


@pytest.mark.parametrize(
    "settings", [RegistrySettings, TrainerSettings, ConverterSettings, GatewaySettings]
)
def test_every_service_setting_is_listed(settings: type[ServiceSettings]) -> None:
    missing = {settings.env_var(name) for name in settings.model_fields} - _listed()
    assert not missing, f"{sorted(missing)} missing from .env.example; {REGENERATE}"


def test_every_variable_compose_interpolates_is_listed() -> None:
    used: set[str] = set()
    for path in (ROOT / "compose.yaml", CPU_OVERRIDE):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    missing = used - _listed()
    assert not missing, f"{sorted(missing)} missing from .env.example; {REGENERATE}"


def test_the_example_holds_no_password() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"[A-Z_]*(PASSWORD|SECRET_KEY|TOKEN)=", line):
            assert line.endswith("="), line
