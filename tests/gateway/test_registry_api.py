"""`/v1/registry/...`: the registry's models, versions and lineage read through the gateway, as
the console's Registry page reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from evals.conftest import ThreadRegistry

from forgeline_cli.walkthrough import register_base_model
from forgeline_kit.tinymodel import TinyModel
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import Served, StartGateway


async def _push_gguf(target: str, directory: Path) -> None:
    """A GGUF version converted from tiny-llama:1, with a quality label, aliased production."""
    (directory / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    async with RegistryClient(target, accept_local_files=True) as client:
        await client.push(
            directory,
            "tiny-llama-gguf",
            kind=pb.VERSION_KIND_GGUF,
            lineage=pb.Lineage(
                parents=[
                    pb.Parent(
                        version=common_pb2.VersionRef(model="tiny-llama", version=1),
                        relation=pb.RELATION_CONVERTED_FROM,
                    )
                ]
            ),
            labels={"quality.rouge_l": "0.8123"},
        )
        await client.set_alias(
            pb.SetAliasRequest(model="tiny-llama-gguf", alias="production", version=1)
        )


@pytest.fixture
def gateway(start_gateway: StartGateway, tmp_path: Path, tiny_model: TinyModel) -> Iterator[Served]:
    registry = ThreadRegistry(tmp_path / "registry").start()
    register_base_model(registry.target, tiny_model)
    (tmp_path / "gguf").mkdir()
    asyncio.run(_push_gguf(registry.target, tmp_path / "gguf"))
    yield start_gateway({"registry_target": registry.target, "registry_local_files": True})
    registry.stop()


def _get(gateway: Served, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {gateway.admin_key}"},
        timeout=30,
    )


def test_models_versions_and_lineage(gateway: Served) -> None:
    models = {m["name"]: m for m in _get(gateway, "/v1/registry/models").json()["data"]}
    assert set(models) == {"tiny-llama", "tiny-llama-gguf"}
    assert models["tiny-llama-gguf"]["aliases"] == {"latest": 1, "production": 1}
    assert models["tiny-llama"]["version_count"] == 1

    (gguf,) = _get(gateway, "/v1/registry/versions", model="tiny-llama-gguf").json()["data"]
    assert (gguf["reference"], gguf["kind"], gguf["state"]) == (
        "tiny-llama-gguf:1",
        "gguf",
        "ready",
    )
    assert gguf["parents"] == [{"reference": "tiny-llama:1", "relation": "converted_from"}]
    assert gguf["labels"] == {"quality.rouge_l": "0.8123"}
    assert sorted(gguf["aliases"]) == ["latest", "production"]
    assert gguf["size_bytes"] == 64

    graph = _get(gateway, "/v1/registry/lineage", reference="tiny-llama:1").json()
    assert {v["reference"] for v in graph["versions"]} == {"tiny-llama:1", "tiny-llama-gguf:1"}
    assert graph["edges"] == [
        {"parent": "tiny-llama:1", "child": "tiny-llama-gguf:1", "relation": "converted_from"}
    ]


def test_bad_references_are_named(gateway: Served) -> None:
    bad = _get(gateway, "/v1/registry/lineage", reference="tiny-llama")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "reference"
    missing = _get(gateway, "/v1/registry/versions", model="no-such-model")
    assert missing.status_code == 404
    inference = httpx.get(
        f"{gateway.url}/v1/registry/models",
        headers={"Authorization": f"Bearer {gateway.inference_key}"},
        timeout=30,
    )
    assert inference.status_code == 403  # the registry is for admins
