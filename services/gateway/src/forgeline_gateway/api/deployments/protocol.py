"""Admin `/v1/deployments` bodies: a deployment spec in, its state out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from forgeline_gateway.deployments.spec import DeploymentSpec

__all__ = ["Deployment", "DeploymentList", "DeploymentSpec"]


class Deployment(BaseModel):
    """A deployment and whether it is being served."""

    object: Literal["deployment"] = "deployment"
    name: str
    backend: str
    status: Literal["ready", "failed"]
    error: str | None = Field(None, description="Why a failed deployment is not served.")
    instances: int = Field(description="Backend instances serving it.")
    adapters: list[str] = Field(
        default_factory=list,
        description="For a base deployment: the adapter deployments served on its processes.",
    )
    loaded_adapters: list[str] = Field(
        default_factory=list,
        description="For a vLLM base deployment: those of `adapters` loaded in its server now, "
        "least recently used first (at most its `max_loaded_adapters`; the others are loaded "
        "again when a request asks for them).",
    )
    created: int
    spec: DeploymentSpec


class DeploymentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Deployment]
