"""Bodies of `/v1/registry/...`: the registry's models, versions and lineage as JSON (the gRPC
contract's messages, in the shapes the console and scripts read)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "LineageEdge",
    "LineageGraph",
    "Parent",
    "RegistryArtifact",
    "RegistryModel",
    "RegistryModelList",
    "RegistryVersion",
    "RegistryVersionList",
]


class RegistryModel(BaseModel):
    """A model of the registry: a name and its numbered versions."""

    object: Literal["registry.model"] = "registry.model"
    name: str
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, int] = Field(default_factory=dict, description="Alias -> version number.")
    latest_version: int = 0
    version_count: int = 0
    created_at: int | None = None
    updated_at: int | None = None


class RegistryModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegistryModel]


class Parent(BaseModel):
    """A version this one was made from, and how (`base`, `adapter_of`, `merged_from`,
    `converted_from`, `trained_on`, `evaluated_on`...)."""

    reference: str
    relation: str


class RegistryArtifact(BaseModel):
    """One file of a version."""

    path: str
    kind: str
    sha256: str
    size_bytes: int
    gguf_file_type: str = ""


class RegistryVersion(BaseModel):
    """One version: what it is, its size, aliases and labels (a job's evaluation adds
    ``quality.<grader>``), and its parents."""

    object: Literal["registry.version"] = "registry.version"
    reference: str = Field(description="`model:number`.")
    model: str
    number: int
    kind: str = Field(description="`base`, `adapter`, `merged`, `gguf`, `gguf_adapter`, ...")
    state: str
    size_bytes: int
    artifact_count: int
    aliases: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    created_at: int | None = None
    template: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    parents: list[Parent] = Field(default_factory=list)
    artifacts: list[RegistryArtifact] | None = Field(
        None, description="Its files; only when one version is retrieved."
    )


class RegistryVersionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegistryVersion]


class LineageEdge(BaseModel):
    parent: str
    child: str
    relation: str


class LineageGraph(BaseModel):
    """The versions reached from `root` (ancestors and descendants), and the links between them."""

    object: Literal["registry.lineage"] = "registry.lineage"
    root: str
    versions: list[RegistryVersion]
    edges: list[LineageEdge]
