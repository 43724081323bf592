"""`/v1/models` response bodies, after OpenAI's API reference
(https://platform.openai.com/docs/api-reference/models), with Forgeline's deployment metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from forgeline_gateway.deployments.spec import ModelMetadata

__all__ = ["Model", "ModelList", "ModelMetadata"]


class Model(BaseModel):
    """A model a client can name in `model`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: str = Field(description="Which kind of backend serves it: llamacpp, vllm, ollama.")
    endpoints: list[str] = Field(description="The API paths it answers.")
    metadata: ModelMetadata = Field(default_factory=ModelMetadata)
    base_deployment: str | None = Field(
        None,
        description="For a fine-tune served as an adapter on a shared base: the base deployment "
        "whose processes apply it.",
    )


class ModelList(BaseModel):
    """Every deployed model."""

    object: Literal["list"] = "list"
    data: list[Model]
