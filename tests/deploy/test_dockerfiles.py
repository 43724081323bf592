"""The images' Dockerfiles: multi-stage, pinned, non-root, health-checked, no secret baked in."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import FORGELINE_SERVICES, ROOT

STANDINS = ("minio", "prometheus")
DOCKERFILES = {
    **{name: ROOT / "services" / name / "Dockerfile" for name in FORGELINE_SERVICES},
    **{f"standin-{name}": ROOT / "deploy" / "standins" / name / "Dockerfile" for name in STANDINS},
}


@dataclass
class Stage:
    name: str
    instructions: list[str] = field(default_factory=list)


def parse(path: Path) -> tuple[list[str], list[Stage]]:
    """(global ARG lines, stages) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    preamble: list[str] = []
    stages: list[Stage] = []
    for line in logical:
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            assert match is not None
            stages.append(Stage(match.group(1) or f"stage{len(stages)}", [line]))
        elif stages:
            stages[-1].instructions.append(line)
        else:
            preamble.append(line)
    return preamble, stages


def _instructions(stage: Stage, keyword: str) -> list[str]:
    return [i for i in stage.instructions if i.split()[0].upper() == keyword]


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_each_service_image_is_multi_stage_on_a_pinned_base_argument(service: str) -> None:
    preamble, stages = parse(DOCKERFILES[service])
    assert len(stages) >= 2, "build tools stay out of the runtime image"
    base = [line for line in preamble if re.match(r"ARG \w*BASE_IMAGE=", line)]
    assert base, "the base image is a build argument"
    image = base[0].split("=", 1)[1]
    assert ":" in image, f"base {image} has no tag"
    assert not image.endswith(":latest"), f"base {image} is not pinned"
    for index, stage in enumerate(stages):
        parent = stage.instructions[0].split()[1]
        earlier = {s.name for s in stages[:index]}
        assert re.match(r"\$\{\w*BASE_IMAGE\}", parent) or parent in earlier, stage.instructions[0]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_runtime_stage_runs_as_a_non_root_user_with_a_healthcheck(name: str) -> None:
    _, stages = parse(DOCKERFILES[name])
    final = stages[-1]
    users = _instructions(final, "USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split()[1].split(":")[0] not in {"root", "0"}
    assert _instructions(final, "HEALTHCHECK")
    assert _instructions(final, "ENTRYPOINT")


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_each_service_image_serves_metrics_on_9464_where_prometheus_scrapes(service: str) -> None:
    # deploy/prometheus scrapes SERVICE:9464 (tests/deploy/test_observability.py); the gateway's
    # API port is not it, so the image must set the metrics listener's address itself.
    _, stages = parse(DOCKERFILES[service])
    final = stages[-1]
    env = " ".join(_instructions(final, "ENV"))
    prefix = f"FORGELINE_{service.upper()}_"
    assert f"{prefix}METRICS_HOST=0.0.0.0" in env.split()
    assert f"{prefix}METRICS_PORT=9464" in env.split()
    exposed = {port for line in _instructions(final, "EXPOSE") for port in line.split()[1:]}
    assert "9464" in exposed


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secret_reaches_an_image_layer(name: str) -> None:
    preamble, stages = parse(DOCKERFILES[name])
    every = preamble + [i for s in stages for i in s.instructions]
    for line in every:
        keyword = line.split()[0].upper()
        if keyword in {"ARG", "ENV"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|CA_CERT", line, re.I), line
        if keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|ca-certificates", line), line
    final = stages[-1]
    assert not [i for i in final.instructions if "type=secret" in i], "secret in the final stage"
    # The extra CA reaches only commands that download, through the BuildKit secret mount.
    for line in every:
        is_run = line.split()[0].upper() == "RUN"
        if is_run and ("pip-install" in line or "pip download" in line):
            assert "--mount=type=secret,id=extra_ca" in line, line


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_python_packages_install_with_the_lock_file_as_constraints(name: str) -> None:
    text = " ".join(i for s in parse(DOCKERFILES[name])[1] for i in s.instructions)
    assert "pip install" not in text, "install through deploy/docker/pip-install.sh"
    if "pip-install " in text:
        assert "COPY requirements/lock.txt /src/requirements/lock.txt" in text
    script = (ROOT / "deploy/docker/pip-install.sh").read_text()
    assert '-c "$constraints"' in script
    assert "requirements/lock.txt" in script


def _package_paths(line: str, after: str) -> list[str]:
    """The ``/src/...`` package paths named after `after` in `line` (up to a redirection)."""
    words = line.split(after, 1)[1].split(">", 1)[0].split()
    return [word.strip('"') for word in words if word.strip('"').startswith("/src/")]


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_third_party_packages_are_a_layer_below_forgelines_sources(service: str) -> None:
    """A change to Forgeline's code must not reinstall torch: the image installs the packages'
    third-party requirements (read from their pyproject.toml alone) in a `deps` stage that never
    sees the sources, then Forgeline's packages with --no-deps in a `build` stage on top, and
    checks the environment is whole."""
    stages = {s.name: s.instructions for s in parse(DOCKERFILES[service])[1]}
    deps, build = stages["deps"], stages["build"]
    assert build[0] == "FROM deps AS build"

    def copied(stage: list[str]) -> list[str]:
        sources = [line.split()[1] for line in stage if line.startswith("COPY ")]
        return [src for src in sources if src.startswith(("proto", "kit", "clients", "services"))]

    assert copied(deps), "no package manifests copied"
    assert all(src.endswith("pyproject.toml") for src in copied(deps)), "sources in the deps stage"
    assert copied(build), "no Forgeline sources copied"
    third_party = next(
        line for line in deps if line.startswith("RUN ") and "third-party-deps.py " in line
    )
    own = next(line for line in build if "pip-install --no-deps" in line)
    assert _package_paths(third_party, "third-party-deps.py") == _package_paths(own, "--no-deps")
    assert "pip check" in own


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_a_code_change_adds_megabytes_to_an_image_not_another_copy_of_the_venv(
    service: str,
) -> None:
    """The runtime stage copies the third-party venv (gigabytes with torch) from `deps`, whose
    layers change only with the lock or a manifest, and Forgeline's packages from `build`, where
    pip installed them under a staging root. Copying the whole venv from `build` instead made
    every commit's images a fresh multi-gigabyte layer, and CI's disk filled up."""
    stages = {s.name: s.instructions for s in parse(DOCKERFILES[service])[1]}
    own = next(line for line in stages["build"] if "pip-install --no-deps" in line)
    assert "--root /staging" in own
    assert "compileall -q -s /staging -p / /staging" in own, "bytecode names the installed paths"
    copies = [line for line in stages["runtime"] if line.startswith("COPY --from=")]
    assert "COPY --from=deps /opt/venv /opt/venv" in copies
    assert "COPY --from=build /staging/opt/venv /opt/venv" in copies
    assert not [line for line in copies if line.startswith("COPY --from=build /opt/venv")]


def test_third_party_deps_reads_extras_and_leaves_out_forgelines_packages() -> None:
    script = ROOT / "deploy/docker/third-party-deps.py"
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(script), str(ROOT / "kit") + "[tinymodel]",
         str(ROOT / "services/trainer")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    assert {"torch", "safetensors", "pydantic>=2", "llamafactory==0.9.5"} <= set(listed)
    assert not [name for name in listed if name.startswith("forgeline")]
    wrong = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(script), str(ROOT / "kit") + "[gpu]"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "has no extra 'gpu'" in wrong.stderr


def test_converter_and_gateway_share_one_llama_cpp_build_stage() -> None:
    stages = {
        name: {s.name: s.instructions for s in parse(DOCKERFILES[name])[1]}
        for name in ("converter", "gateway")
    }
    assert stages["converter"]["toolchain"] == stages["gateway"]["toolchain"], (
        "identical stages share the build cache: the ~9 minute llama.cpp build runs once"
    )
    build = " ".join(stages["gateway"]["toolchain"])
    assert "forgeline_kit.llamacpp build --portable" in build


def test_the_build_context_leaves_out_venvs_env_files_and_keys() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "**", "deny by default, then allow what images need"
    for pattern in ("**/.env", "**/forgeline.env", "**/*.pem", "**/*.key"):
        assert pattern in rules
    assert not [rule for rule in rules if rule.startswith("!") and ".venv" in rule]


def test_every_file_an_image_copies_is_in_the_build_context() -> None:
    """A COPY of a path .dockerignore leaves out fails only when that image is built (minutes
    into `make compose-smoke`); check every Dockerfile of the repository here instead."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    ]
    allowed = [rule[1:].removesuffix("**") for rule in rules]
    for dockerfile in sorted(ROOT.glob("**/Dockerfile")):
        if ".venv" in dockerfile.parts:
            continue
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            for source in sources:
                assert any(
                    source == rule or source.startswith(rule) or f"{source}/" == rule
                    for rule in allowed
                ), f"{dockerfile.relative_to(ROOT)}: COPY {source} is left out by .dockerignore"
