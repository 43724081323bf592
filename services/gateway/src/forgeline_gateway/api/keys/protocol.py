"""Admin `/v1/keys` bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_gateway.security.keys import Scope

__all__ = ["ApiKey", "ApiKeyCreate", "ApiKeyList", "CreatedApiKey"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="Who or what uses the key.")
    scopes: list[Scope] = Field(min_length=1, description="inference, admin, or both.")


class ApiKey(BaseModel):
    """A key as listed: never the key itself."""

    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    scopes: list[str]
    created: int
    revoked: int | None = None


class CreatedApiKey(ApiKey):
    key: str = Field(description="The key. It is shown this once and never again.")


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKey]
