"""compose.yaml as an operator runs it: with and without the CPU override."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from .conftest import (
    CPU_OVERRIDE,
    DATABASE_SERVICES,
    FORGELINE_SERVICES,
    ROOT,
    STANDINS_OVERRIDE,
    ResolveCompose,
)
from .dockerfile import SERVICE_IMAGES, image_stages, instructions

# Services that may publish a port: the gateway, and Grafana as a loopback-only console.
PUBLISHED = {"gateway": None, "grafana": "127.0.0.1"}
ONE_SHOT = {"minio-init"}


@pytest.fixture(scope="module")
def gpu_stack(resolve_compose: ResolveCompose) -> dict[str, Any]:
    return resolve_compose()


@pytest.fixture(scope="module")
def cpu_stack(resolve_compose: ResolveCompose) -> dict[str, Any]:
    return resolve_compose(CPU_OVERRIDE)


def _gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return any("gpu" in d.get("capabilities", []) for d in devices.get("devices", []))


def test_the_gpu_stack_has_every_service_and_gpus_for_trainer_and_vllm(
    gpu_stack: dict[str, Any],
) -> None:
    services = gpu_stack["services"]
    expected = {*FORGELINE_SERVICES, "postgres", "minio", "minio-init", "vllm", "ollama",
                "prometheus", "grafana"}  # fmt: skip
    assert set(services) == expected
    assert {name for name, s in services.items() if _gpu_reserved(s)} == {"trainer", "vllm"}


def test_the_cpu_override_drops_gpus_and_vllm_and_trains_on_cpu(cpu_stack: dict[str, Any]) -> None:
    services = cpu_stack["services"]
    assert "vllm" not in services
    assert not [name for name, s in services.items() if _gpu_reserved(s)]
    assert services["trainer"]["environment"]["FORGELINE_TRAINER_DEVICE"] == "cpu"
    assert services["gateway"]["environment"]["FORGELINE_GATEWAY_VLLM_URLS"] == "[]"
    prometheus = [v["source"] for v in services["prometheus"]["volumes"]]
    assert str(ROOT / "deploy/prometheus/prometheus.cpu.yml") in prometheus


def test_vllm_comes_back_on_a_cpu_host_only_when_asked(resolve_compose: ResolveCompose) -> None:
    assert "vllm" in resolve_compose(CPU_OVERRIDE, profiles=("gpu",))["services"]


@pytest.mark.parametrize("variant", ["gpu_stack", "cpu_stack"])
def test_every_long_running_service_has_a_healthcheck(
    variant: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(variant)["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} has its healthcheck disabled"


@pytest.mark.parametrize("variant", ["gpu_stack", "cpu_stack"])
def test_services_start_after_what_they_need_is_healthy(
    variant: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(variant)["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule.get("condition") in {
                "service_healthy", "service_completed_successfully", "service_started",
            }, f"{name} -> {dependency} has no condition"  # fmt: skip
            if rule["condition"] == "service_started":
                # Only optional backends may be merely started (the gateway skips them).
                assert rule.get("required") is False, f"{name} -> {dependency}"
    needs = {name: set(services[name].get("depends_on", {})) for name in FORGELINE_SERVICES}
    assert "minio-init" in needs["registry"]
    assert "registry" in needs["trainer"]
    assert "registry" in needs["converter"]
    assert {"registry", "trainer", "converter"} <= needs["gateway"]
    for name in DATABASE_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("variant", ["gpu_stack", "cpu_stack"])
def test_only_the_gateway_and_the_loopback_console_publish_ports(
    variant: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(variant)["services"]
    publishing = {name for name, s in services.items() if s.get("ports")}
    assert publishing == set(PUBLISHED)
    for name, host_ip in PUBLISHED.items():
        for port in services[name]["ports"]:
            if host_ip is not None:
                assert port.get("host_ip") == host_ip, f"{name} publishes {port} beyond loopback"
    # The gateway publishes its API, not its metrics port (Prometheus scrapes that inside).
    assert [int(p["target"]) for p in services["gateway"]["ports"]] == [8080]


def test_state_lives_in_named_volumes(gpu_stack: dict[str, Any]) -> None:
    services = gpu_stack["services"]
    for name, target in {
        "postgres": "/var/lib/postgresql/data",
        "minio": "/data", "trainer": "/var/lib/forgeline/trainer",
        "converter": "/var/lib/forgeline/converter", "gateway": "/var/lib/forgeline/gateway",
        "vllm": "/root/.cache/huggingface", "ollama": "/root/.ollama",
    }.items():  # fmt: skip
        mounts = {v["target"]: v for v in services[name].get("volumes", [])}
        assert mounts[target]["type"] == "volume", f"{name} keeps {target} in the container"


def test_forgeline_services_build_from_their_dockerfile_with_pinned_images(
    gpu_stack: dict[str, Any],
) -> None:
    services = gpu_stack["services"]
    for name in FORGELINE_SERVICES:
        build, expected = services[name]["build"], SERVICE_IMAGES[name]
        assert build["dockerfile"] == str(expected.dockerfile.relative_to(ROOT))
        assert build.get("target") == expected.target
    for name in ("postgres", "minio", "vllm", "ollama", "prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image, f"{name} image {image} has no tag"
        assert not image.endswith(":latest"), f"{name} image {image} is not pinned"


def test_the_smoke_run_builds_each_image_as_compose_does(gpu_stack: dict[str, Any]) -> None:
    """scripts/compose-smoke.sh builds the images with `docker build` itself (compose then starts
    them with --no-build): from the Dockerfile and target compose.yaml names."""
    script = (ROOT / "scripts" / "compose-smoke.sh").read_text()
    for name in FORGELINE_SERVICES:
        build = gpu_stack["services"][name]["build"]
        call = rf'^build "forgeline/{name}:\$TAG" (\S+)(?: --target=(\S+))?'
        calls = re.findall(call, script, re.MULTILINE)
        assert calls == [(build["dockerfile"], build.get("target", ""))], name


def test_no_secret_is_written_in_the_compose_files() -> None:
    for path in (ROOT / "compose.yaml", CPU_OVERRIDE, STANDINS_OVERRIDE):
        for line in path.read_text().splitlines():
            match = re.search(r"(PASSWORD|SECRET_KEY|TOKEN)\w*:\s*(\S+)", line)
            if match:
                assert match.group(2).startswith("${"), f"{path.name}: {line.strip()}"
            # A database URL's password (postgresql://USER:PASSWORD@HOST/...).
            for password in re.findall(r"postgresql://[^:/@\s]+:([^@\s]*)@", line):
                assert password.startswith("${"), f"{path.name}: {line.strip()}"


@pytest.mark.parametrize("variant", ["gpu_stack", "cpu_stack"])
def test_the_services_keep_their_state_in_the_one_postgresql_database(
    variant: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(variant)["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert postgres["environment"]["POSTGRES_USER"] == "forgeline"
    assert postgres["environment"]["POSTGRES_DB"] == "forgeline"
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "test-postgres-password"
    assert [v["source"] for v in postgres["volumes"]] == ["postgres-data"]
    assert postgres["volumes"][0]["type"] == "volume"
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"], check
    assert "forgeline" in check
    assert postgres["networks"] == {"internal": None}
    assert not postgres.get("ports")
    url = "postgresql://forgeline:test-postgres-password@postgres:5432/forgeline"
    for name in DATABASE_SERVICES:
        assert services[name]["environment"][f"FORGELINE_{name.upper()}_DATABASE_URL"] == url
    # No service is left on a SQLite file.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert "sqlite:" not in str(value), f"{name}: {key}={value}"


REQUIRED_SECRETS = (
    "MINIO_ROOT_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "FORGELINE_INTERNAL_TOKEN",
)


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_the_required_passwords_are_refused_when_missing(compose_bin: str, missing: str) -> None:
    # One secret missing at a time: with several missing, Compose names whichever it meets first.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    env |= {secret: "x" * 24 for secret in REQUIRED_SECRETS if secret != missing}
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [compose_bin, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert missing in done.stderr


def test_the_smoke_stack_replaces_only_what_cannot_be_pulled(
    resolve_compose: ResolveCompose,
) -> None:
    services = resolve_compose(CPU_OVERRIDE, STANDINS_OVERRIDE)["services"]
    assert set(services) == {*FORGELINE_SERVICES, "postgres", "minio", "minio-init", "prometheus"}
    for name in ("postgres", "minio", "prometheus"):
        assert services[name]["image"].startswith("forgeline-standin/"), name
        assert services[name]["pull_policy"] == "never", name
    for name in FORGELINE_SERVICES:
        assert services[name]["image"].startswith(f"forgeline/{name}:")


def test_the_smoke_run_builds_every_standin_and_checks_the_state_in_postgresql(
    resolve_compose: ResolveCompose,
) -> None:
    services = resolve_compose(CPU_OVERRIDE, STANDINS_OVERRIDE)["services"]
    script = (ROOT / "scripts" / "compose-smoke.sh").read_text()
    standins = {name: s["image"] for name, s in services.items()
                if s["image"].startswith("forgeline-standin/")}  # fmt: skip
    assert set(standins) == {"postgres", "minio", "prometheus"}
    for name, image in standins.items():
        call = rf"^build {re.escape(image)} deploy/standins/{name}/Dockerfile "
        assert re.search(call, script, re.MULTILINE), name
    assert re.search(r"^POSTGRES_PASSWORD=", script, re.MULTILINE)
    assert "exec -T postgres psql" in script
    for table in ("operations", "api_keys", "deployments", "files"):
        assert f"FROM {table}" in script, table


def test_each_forgeline_volume_mount_point_exists_in_its_image(gpu_stack: dict[str, Any]) -> None:
    # A named volume mounted where the image has no directory is created root-owned, and the
    # non-root service could not write its state there.
    for name in FORGELINE_SERVICES:
        _, final = image_stages(SERVICE_IMAGES[name])
        runs = " ".join(instructions(final, "RUN"))
        made = " ".join(re.findall(r"mkdir -p ([^&;]+)", runs))
        for volume in gpu_stack["services"][name].get("volumes", []):
            assert volume["target"] in made, f"{name}: {volume['target']} is not made by its image"


def test_every_forgeline_service_carries_the_internal_token_and_runs_an_init(
    gpu_stack: dict[str, Any],
) -> None:
    services = gpu_stack["services"]
    for name in ("registry", "trainer", "converter", "gateway"):
        service = services[name]
        assert service["environment"]["FORGELINE_INTERNAL_TOKEN"] == "test-internal-token-0123"
        assert service.get("init") is True, name
