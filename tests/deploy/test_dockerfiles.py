"""The images' Dockerfiles: multi-stage, pinned, non-root, health-checked, no secret baked in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FORGELINE_SERVICES, ROOT
from .dockerfile import (
    LLAMACPP_DOCKERFILE,
    SERVICE_IMAGES,
    Image,
    Stage,
    image_stages,
    instructions,
    lineage,
    parse,
)

STANDINS = ("minio", "prometheus", "postgres")
IMAGES = {
    **SERVICE_IMAGES,
    **{f"standin-{name}": Image(ROOT / "deploy" / "standins" / name / "Dockerfile")
       for name in STANDINS},
}  # fmt: skip
DOCKERFILES = sorted({image.dockerfile for image in IMAGES.values()})
INSTALL_PACKAGES = ROOT / "deploy" / "docker" / "install-packages.sh"


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_each_service_image_is_multi_stage_on_a_pinned_base_argument(service: str) -> None:
    image = SERVICE_IMAGES[service]
    preamble, stages = parse(image.dockerfile)
    assert len(stages) >= 2, "build tools stay out of the runtime image"
    assert image.target is None or image.target in {s.name for s in stages}
    base = [line for line in preamble if re.match(r"ARG \w*BASE_IMAGE=", line)]
    assert base, "the base image is a build argument"
    image_name = base[0].split("=", 1)[1]
    assert ":" in image_name, f"base {image_name} has no tag"
    assert not image_name.endswith(":latest"), f"base {image_name} is not pinned"
    for index, stage in enumerate(stages):
        earlier = {s.name for s in stages[:index]}
        assert re.match(r"\$\{\w*BASE_IMAGE\}", stage.parent) or stage.parent in earlier, (
            stage.instructions[0]
        )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_runtime_stage_runs_as_a_non_root_user_with_a_healthcheck(name: str) -> None:
    _, final = image_stages(IMAGES[name])
    users = instructions(final, "USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split()[1].split(":")[0] not in {"root", "0"}
    assert instructions(final, "HEALTHCHECK")
    assert instructions(final, "ENTRYPOINT")


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_each_service_image_serves_metrics_on_9464_where_prometheus_scrapes(service: str) -> None:
    # deploy/prometheus scrapes SERVICE:9464 (tests/deploy/test_observability.py); the gateway's
    # API port is not it, so the image must set the metrics listener's address itself.
    _, final = image_stages(SERVICE_IMAGES[service])
    env = " ".join(instructions(final, "ENV")).split()
    prefix = f"FORGELINE_{service.upper()}_"
    assert f"{prefix}METRICS_HOST=0.0.0.0" in env
    assert f"{prefix}METRICS_PORT=9464" in env
    exposed = {port for line in instructions(final, "EXPOSE") for port in line.split()[1:]}
    assert "9464" in exposed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_no_secret_reaches_an_image_layer(dockerfile: Path) -> None:
    preamble, stages = parse(dockerfile)
    every = preamble + [i for s in stages for i in s.instructions]
    for line in every:
        keyword = line.split()[0].upper()
        if keyword in {"ARG", "ENV"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|CA_CERT", line, re.I), line
        if keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|ca-certificates", line), line
    for image in (i for i in IMAGES.values() if i.dockerfile == dockerfile):
        _, final = image_stages(image)
        secret = [i for s in final for i in s.instructions if "type=secret" in i]
        assert not secret, f"secret in the stages of {image.target or 'the image'}"
    # The extra CA reaches only commands that download, through the BuildKit secret mount.
    for line in every:
        is_run = line.split()[0].upper() == "RUN"
        downloads = ("pip-install", "pip download", "install-packages")
        if is_run and any(command in line for command in downloads):
            assert "--mount=type=secret,id=extra_ca" in line, line


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_python_packages_install_with_the_lock_file_as_constraints(dockerfile: Path) -> None:
    text = " ".join(i for s in parse(dockerfile)[1] for i in s.instructions)
    assert "pip install" not in text, "install through deploy/docker/pip-install.sh"
    if "pip-install " in text or "install-packages " in text:
        assert "COPY requirements/lock.txt /src/requirements/lock.txt" in text
    script = (ROOT / "deploy/docker/pip-install.sh").read_text()
    assert '-c "$constraints"' in script
    assert "requirements/lock.txt" in script
    installer = INSTALL_PACKAGES.read_text()
    assert "pip install" not in installer
    assert installer.count("pip-install ") == 2, "both steps install through pip-install.sh"


def _install_step(mode: str) -> str:
    """What deploy/docker/install-packages.sh runs for `mode` (its case branch)."""
    script = INSTALL_PACKAGES.read_text()
    return script.split(f"\n{mode})\n", 1)[1].split("\n    ;;", 1)[0]


def _package_paths(line: str, after: str) -> list[str]:
    """The ``/src/...`` package paths named after `after` in `line`."""
    words = line.split(after, 1)[1].split()
    return [word.strip('"') for word in words if word.strip('"').startswith("/src/")]


def _copied_from(final: list[Stage], path: str) -> str:
    """The stage whose `path` the image copies to /opt/venv."""
    suffix = f" {path} /opt/venv"
    copies = [
        line for line in instructions(final, "COPY")
        if line.startswith("COPY --from=") and line.endswith(suffix)
    ]  # fmt: skip
    assert len(copies) == 1, copies
    return copies[0].split()[1].removeprefix("--from=")


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_third_party_packages_are_a_layer_below_forgelines_sources(service: str) -> None:
    """A change to Forgeline's code must not reinstall torch: the image installs the packages'
    third-party requirements (read from their pyproject.toml alone) in a deps stage that never
    sees the sources, then Forgeline's packages with --no-deps in a build stage on top of it
    (deploy/docker/install-packages.sh, which checks the environment is whole)."""
    stages, final = image_stages(SERVICE_IMAGES[service])
    deps = lineage(stages, _copied_from(final, "/opt/venv"))
    build = lineage(stages, _copied_from(final, "/staging/opt/venv"))
    assert build[: len(deps)] == deps, "the build stage starts from the deps stage"
    own_stages = build[len(deps) :]
    assert own_stages, "Forgeline's packages are installed in a stage of their own"

    def copied(chain: list[Stage]) -> list[str]:
        sources = [line.split()[1] for line in instructions(chain, "COPY")]
        return [src for src in sources if src.startswith(("proto", "kit", "clients", "services"))]

    assert copied(deps), "no package manifests copied"
    assert all(src.endswith("pyproject.toml") for src in copied(deps)), "sources in the deps stage"
    assert copied(own_stages), "no Forgeline sources copied"
    third_party = [line for line in instructions(deps, "RUN") if "install-packages " in line]
    own = [line for line in instructions(own_stages, "RUN") if "install-packages " in line]
    assert len(third_party) == len(own) == 1
    packages = _package_paths(third_party[0], "install-packages third-party")
    assert packages == _package_paths(own[0], "install-packages own")
    assert f"/src/services/{service}" in packages, "the image installs its own service"
    assert "third-party-deps.py" in _install_step("third-party")
    assert "pip check" in _install_step("own")


@pytest.mark.parametrize("service", sorted(FORGELINE_SERVICES))
def test_a_code_change_adds_megabytes_to_an_image_not_another_copy_of_the_venv(
    service: str,
) -> None:
    """The runtime stage copies the third-party venv (gigabytes with torch) from the deps stage,
    whose layers change only with the lock or a manifest, and Forgeline's packages from the build
    stage, where pip installed them under a staging root. Copying the whole venv from the build
    stage instead made every commit's images a fresh multi-gigabyte layer, and CI's disk filled
    up."""
    _, final = image_stages(SERVICE_IMAGES[service])
    build = _copied_from(final, "/staging/opt/venv")
    assert _copied_from(final, "/opt/venv") != build
    own = _install_step("own")
    assert "pip-install --no-deps --root /staging" in own
    assert "compileall -q -s /staging -p / /staging" in own, "bytecode names the installed paths"
    copies = [line for line in instructions(final, "COPY") if line.startswith("COPY --from=")]
    assert not [line for line in copies if line.startswith(f"COPY --from={build} /opt/venv")]


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


def _all_dockerfiles() -> list[Path]:
    found = [*ROOT.glob("**/Dockerfile"), *ROOT.glob("**/*.Dockerfile")]
    return sorted(path for path in found if not {".venv", ".venv-clients"} & set(path.parts))


def test_converter_and_gateway_share_one_llama_cpp_build_stage() -> None:
    """The ~10-minute llama.cpp compile exists once: the `toolchain` stage of the Dockerfile
    whose two targets are the converter and the gateway. BuildKit builds it for the first target
    and takes it from its cache for the other, in either order, with no base image to build
    first; nothing else compiles llama.cpp."""
    assert SERVICE_IMAGES["converter"].dockerfile == LLAMACPP_DOCKERFILE
    assert SERVICE_IMAGES["gateway"].dockerfile == LLAMACPP_DOCKERFILE
    _, stages = parse(LLAMACPP_DOCKERFILE)
    compiling = [
        stage.name for stage in stages
        if any("forgeline_kit.llamacpp build --portable" in i for i in stage.instructions)
    ]  # fmt: skip
    assert compiling == ["toolchain"]
    for service in ("converter", "gateway"):
        _, final = image_stages(SERVICE_IMAGES[service])
        assert "COPY --from=toolchain /opt/llama.cpp /opt/llama.cpp" in instructions(final, "COPY")
        assert "FORGELINE_LLAMACPP_HOME=/opt/llama.cpp" in " ".join(instructions(final, "ENV"))
    others = [path for path in _all_dockerfiles() if path != LLAMACPP_DOCKERFILE]
    assert others
    for path in others:
        assert "forgeline_kit.llamacpp build" not in path.read_text(), _id(path)


def test_each_image_takes_only_its_own_stages() -> None:
    """In the shared Dockerfile, a target's stages name its service: the converter's image holds
    none of the gateway's packages, nor the gateway's the converter's (torch)."""
    stages = {stage.name: stage for stage in parse(LLAMACPP_DOCKERFILE)[1]}
    for service, other in (("converter", "gateway"), ("gateway", "converter")):
        image = SERVICE_IMAGES[service]
        assert image.target == service
        seen: set[str] = set()
        todo = [service]
        while todo:  # the target, the stages it starts FROM and copies from, and theirs
            name = todo.pop()
            if name in seen or name not in stages:
                continue
            seen.add(name)
            stage = stages[name]
            todo.append(stage.parent)
            todo += [
                word.removeprefix("--from=")
                for line in stage.instructions
                for word in line.split()
                if word.startswith("--from=")
            ]
        assert not [name for name in seen if other in name], seen
        text = " ".join(i for name in seen for i in stages[name].instructions)
        assert f"services/{other}" not in text


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
    for dockerfile in _all_dockerfiles():
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
