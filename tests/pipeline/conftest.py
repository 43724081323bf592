"""Fixtures of the end-to-end suite: the four services as real processes (the embedded default
`forgeline demo` runs), the tiny base model registered and served, and an OpenAI SDK client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from database_urls import database_url, on_postgresql
from openai import OpenAI

from forgeline_cli.stack import LocalStack
from forgeline_cli.walkthrough import deploy_base_model, register_base_model
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel


@dataclass
class RunningStack:
    stack: LocalStack
    base: str
    base_gguf: dict[str, str]
    client: OpenAI
    work: Path


# One stack for the whole package: every module's jobs run on it, as on a user's stack.
@pytest.fixture(scope="package")
def running(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
) -> Iterator[RunningStack]:
    """The stack with the tiny model registered as `tiny-llama` (HF, GGUF F16 and Q8_0) and
    served from its Q8_0 GGUF."""
    work = tmp_path_factory.mktemp("pipeline")
    databases: dict[str, str] = {}
    if on_postgresql():  # make test-postgres: every service's state in one PostgreSQL database
        url = database_url(work / "stack.db")
        databases = {
            f"FORGELINE_{s}_DATABASE_URL": url for s in ("TRAINER", "CONVERTER", "GATEWAY")
        }
    stack = LocalStack(work / "stack", extra_env=databases)
    try:
        stack.start()
        base = register_base_model(stack.registry_target, tiny_model)
        gguf = deploy_base_model(stack.gateway_url, stack.services["converter"].target, base)
        client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="test", max_retries=0)
        yield RunningStack(stack, base, gguf, client, work)
    finally:
        stack.stop()
