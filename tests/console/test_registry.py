"""The Registry page in a real headless Chromium: models, a model's versions with their quality
card and parents, and a version's lineage drawn from the registry through the gateway's API."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from playwright.sync_api import Page, expect

from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.client import RegistryClient

from .conftest import Console


async def _push_gguf(target: str, directory: Path) -> None:
    """A GGUF (the one file in `directory`) converted from the base tiny-llama:1, as a
    fine-tuning job's would be."""
    async with RegistryClient(target, accept_local_files=True) as client:
        await client.push(
            directory,
            "tiny-llama-console-gguf",
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


def test_the_registry_page_shows_versions_and_lineage(
    console: Console, page: Page, tmp_path: Path
) -> None:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    # Playwright's sync API holds this thread's event loop: the push runs on a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _push_gguf(console.registry_target, tmp_path / "gguf")).result()

    page.goto(f"{console.url}/console/registry")
    expect(page.locator("nav [data-nav=registry]")).to_have_attribute("aria-current", "page")
    page.get_by_role("link", name="tiny-llama-console-gguf").click()

    versions = page.locator(".card-versions")
    expect(versions.get_by_role("heading")).to_have_text("Versions of tiny-llama-console-gguf")
    row = versions.locator("tbody tr").first
    expect(row).to_contain_text("tiny-llama-console-gguf:1")
    expect(row).to_contain_text("rouge_l 0.8123")
    expect(row).to_contain_text("converted from tiny-llama:1")

    row.get_by_role("button", name="Lineage").click()
    expect(page).to_have_url(
        f"{console.url}/console/registry?model=tiny-llama-console-gguf&version=1"
    )
    graph = page.locator(".card-lineage svg.lineage")
    expect(graph.locator(".lineage-node")).to_have_count(2)
    expect(graph.locator(".lineage-edge[data-relation=converted_from]")).to_have_count(1)
    expect(graph.locator(".lineage-selected")).to_have_attribute(
        "data-node", "tiny-llama-console-gguf:1"
    )
    files = page.locator(".card-files")
    expect(files.locator("tbody tr")).to_have_count(1)
    expect(files).to_contain_text("model.gguf")
    expect(files.locator("tbody td span.mono").last).to_have_attribute(
        "title", re.compile("^[0-9a-f]{64}$")
    )
    console.screenshot(page, "registry")

    # An HF model is offered to vLLM, a GGUF to llama.cpp.
    page.goto(f"{console.url}/console/registry?model=tiny-llama&version=1")
    expect(page.get_by_role("button", name="Deploy on vLLM")).to_be_visible()
    page.go_back()

    # Deploying it from here asks the gateway; its refusal (the bytes are no real GGUF) is shown.
    page.fill("#deploy-name", "from-the-registry")
    page.get_by_role("button", name="Deploy on llama.cpp").click()
    expect(files.get_by_role("alert")).to_contain_text("Not deployed.")
