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
    assert all(re.match(r"FROM \$\{\w*BASE_IMAGE\}", s.instructions[0]) for s in stages)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_runtime_stage_runs_as_a_non_root_user_with_a_healthcheck(name: str) -> None:
    _, stages = parse(DOCKERFILES[name])
    final = stages[-1]
    users = _instructions(final, "USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split()[1].split(":")[0] not in {"root", "0"}
    assert _instructions(final, "HEALTHCHECK")
    assert _instructions(final, "ENTRYPOINT")


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
    third-party requirements (read from their pyproject.toml alone) before it copies the sources,
    then Forgeline's packages with --no-deps, and checks the environment is whole."""
    build = {s.name: s.instructions for s in parse(DOCKERFILES[service])[1]}["build"]
    copies = {i: line.split()[1] for i, line in enumerate(build) if line.startswith("COPY ")}
    sources = [i for i, src in copies.items() if src.startswith(("proto", "kit", "services"))]
    manifests = [i for i in sources if copies[i].endswith("pyproject.toml")]
    trees = [i for i in sources if i not in manifests]
    runs = {i: line for i, line in enumerate(build) if line.startswith("RUN ")}
    third_party = next(i for i, line in runs.items() if "third-party-deps.py " in line)
    own = next(i for i, line in runs.items() if "pip-install --no-deps" in line)

    assert trees, "no Forgeline sources copied"
    assert max(manifests) < third_party < min(trees), "sources copied before the third-party layer"
    assert max(trees) < own
    packages = _package_paths(build[third_party], "third-party-deps.py")
    assert packages == _package_paths(build[own], "--no-deps")
    assert "pip check" in build[own]


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
