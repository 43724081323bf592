"""Reading the images' Dockerfiles: their stages, and the stages one image is made of."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import ROOT

# The converter and the gateway carry the same llama.cpp build: two targets of one Dockerfile.
LLAMACPP_DOCKERFILE = ROOT / "services" / "llamacpp.Dockerfile"


@dataclass(frozen=True)
class Image:
    """How an image is built: a Dockerfile and, where it makes several images, the target stage."""

    dockerfile: Path
    target: str | None = None


# Each Forgeline image, as compose.yaml and scripts/compose-smoke.sh build it (test_compose.py).
SERVICE_IMAGES = {
    "registry": Image(ROOT / "services" / "registry" / "Dockerfile"),
    "trainer": Image(ROOT / "services" / "trainer" / "Dockerfile"),
    "converter": Image(LLAMACPP_DOCKERFILE, "converter"),
    "gateway": Image(LLAMACPP_DOCKERFILE, "gateway"),
}


@dataclass
class Stage:
    name: str
    instructions: list[str] = field(default_factory=list)

    @property
    def parent(self) -> str:
        """What the stage starts FROM: an image (maybe a build argument) or an earlier stage."""
        return self.instructions[0].split()[1]


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


def lineage(stages: list[Stage], name: str) -> list[Stage]:
    """Stage `name` and the stages it starts FROM, the first one first: between them they hold
    every instruction of what that stage makes (its settings, its layers)."""
    by_name = {stage.name: stage for stage in stages}
    chain = [by_name[name]]
    while chain[0].parent in by_name:
        chain.insert(0, by_name[chain[0].parent])
    return chain


def image_stages(image: Image) -> tuple[list[Stage], list[Stage]]:
    """(every stage of the image's Dockerfile, the lineage of the stage that is the image)."""
    _, stages = parse(image.dockerfile)
    return stages, lineage(stages, image.target or stages[-1].name)


def instructions(chain: list[Stage], keyword: str) -> list[str]:
    """The `keyword` instructions of the stages in `chain`, in order."""
    return [i for stage in chain for i in stage.instructions if i.split()[0].upper() == keyword]
