"""The deployments page in a real headless Chromium: a base deployment on llama-server with a GGUF
adapter deployment served on its process, listed beneath it; each name leads to the playground;
undeploying asks first, shows the API's refusal in words, and removes the row once done."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from gguf_adapters import make_gguf_adapter
from playwright.sync_api import Page, Route, expect

from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel

from .browser import Requests
from .conftest import Console, _deploy

BASE = "tiny-base"
ADAPTER = "ft:tiny-base:console"


def _undeploy(console: Console, name: str) -> None:
    response = httpx.delete(
        f"{console.url}/v1/deployments/{quote(name, safe='')}", timeout=180, trust_env=False
    )
    assert response.status_code in (204, 404), response.text


@pytest.fixture
def base_with_adapter(
    console: Console,
    tiny_gguf: Path,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
) -> Iterator[None]:
    """`tiny-base` on a llama-server process of its own, with a GGUF adapter of the tiny model
    (converted by the pinned llama.cpp) deployed on it; whatever is left is undeployed after."""
    adapter = make_gguf_adapter(
        tiny_model.path, console.model_dir / "adapters", llamacpp_toolchain, seed=1
    )
    try:
        _deploy(
            console.gateway,
            {
                "name": BASE,
                "backend": "llamacpp",
                "gguf": str(tiny_gguf),
                "parallel": 2,
                "context_size": 512,
                "metadata": {"base": "tiny-llama", "version": "tiny-llama-gguf:1"},
            },
        )
        _deploy(
            console.gateway,
            {"name": ADAPTER, "backend": "llamacpp", "base": BASE, "lora": [str(adapter.gguf)]},
        )
        yield
    finally:
        _undeploy(console, ADAPTER)
        _undeploy(console, BASE)


def _confirm_undeploy(page: Page, name: str) -> None:
    page.get_by_role("button", name=f"Undeploy {name}", exact=True).click()
    dialog = page.get_by_role("alertdialog", name=f"Undeploy {name}?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Yes, undeploy it").click()


@pytest.mark.usefixtures("base_with_adapter")
def test_a_base_lists_its_adapter_beneath_it_and_undeploys_after_confirming(
    console: Console, page: Page, requests: Requests
) -> None:
    page.goto(f"{console.url}/console/deployments")
    expect(page.locator("h1")).to_have_text("Deployments")
    expect(page.locator("a[data-nav=deployments]")).to_have_attribute("aria-current", "page")

    group = page.locator(f"tbody.deployment-group[data-base='{BASE}']")
    rows = group.locator("tr")
    expect(rows).to_have_count(2)
    base, adapter = rows.nth(0), rows.nth(1)
    expect(base).to_have_class("base-row")
    expect(base).to_contain_text("llamacpp")
    expect(base.locator(".badge")).to_have_text("ready")
    expect(base.locator(".source")).to_contain_text("GGUF")
    expect(base.locator(".source")).to_contain_text("tiny-f16.gguf")
    expect(adapter).to_have_class("adapter-row")
    expect(adapter).to_contain_text(f"adapter on {BASE}")
    expect(adapter.locator(".source")).to_contain_text("GGUF")
    # The deployments the console fixture made are groups of their own, without adapters.
    expect(page.locator("tbody.deployment-group[data-base='tiny'] tr")).to_have_count(1)
    # Every servable name leads to the playground with that model chosen.
    expect(base.get_by_role("link", name=BASE)).to_have_attribute(
        "href", f"/console/playground?model={BASE}"
    )
    expect(adapter.get_by_role("link", name=ADAPTER)).to_have_attribute(
        "href", f"/console/playground?model={quote(ADAPTER, safe='')}"
    )
    console.screenshot(page, "deployments")

    adapter.get_by_role("link", name=ADAPTER).click()
    expect(page.locator("h1")).to_have_text("Playground")
    expect(page.locator("#model-a")).to_have_value(ADAPTER)
    page.go_back()
    expect(rows).to_have_count(2)

    # A confirmation first; keeping it changes nothing.
    page.get_by_role("button", name=f"Undeploy {ADAPTER}", exact=True).click()
    dialog = page.get_by_role("alertdialog", name=f"Undeploy {ADAPTER}?")
    expect(dialog).to_contain_text(f"Its base {BASE} restarts without it")
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    expect(rows).to_have_count(2)

    # The gateway refuses to remove a base that carries adapters: its words are shown.
    _confirm_undeploy(page, BASE)
    expect(page.get_by_role("alert")).to_contain_text(f"{BASE} was not undeployed.")
    expect(page.get_by_role("alert")).to_contain_text("is the base of the adapter deployments")
    expect(rows).to_have_count(2)

    _confirm_undeploy(page, ADAPTER)
    expect(page.get_by_role("status")).to_contain_text(f"Undeployed {ADAPTER}.")
    expect(rows).to_have_count(1)
    expect(page.locator(f"tr[data-deployment='{ADAPTER}']")).to_have_count(0)
    assert httpx.get(f"{console.url}/v1/deployments/{quote(ADAPTER, safe='')}").status_code == 404

    _confirm_undeploy(page, BASE)
    expect(page.get_by_role("status")).to_contain_text(f"Undeployed {BASE}.")
    expect(group).to_have_count(0)
    expect(page.locator("tbody.deployment-group")).to_have_count(len(console.models))
    # Offline: nothing was fetched from anywhere but this gateway.
    assert requests.foreign(console.url) == []


def test_with_nothing_deployed_the_page_says_how_to_deploy(console: Console, page: Page) -> None:
    def empty(route: Route) -> None:
        route.fulfill(json={"object": "list", "data": []})

    page.route("**/v1/deployments", empty)
    page.goto(f"{console.url}/console/deployments")

    expect(page.locator(".empty")).to_contain_text("Nothing is deployed.")
    expect(page.locator(".empty")).to_contain_text("forgeline deploy")
    expect(page.locator("table")).to_have_count(0)
