"""The API keys page in a real headless Chromium: an admin makes a key whose secret is shown once
and works against the API, then revokes it after confirming and the API refuses it; a key without
the admin scope is told why the page is empty; a gateway without keys says it checks none."""

from __future__ import annotations

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from .conftest import Console, Keyed

NAME = "support-bot"


def _sign_in(page: Page, key: str) -> None:
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-submit")
    expect(page.locator("#key-dialog")).to_be_hidden()


def _models_status(url: str, key: str) -> int:
    """What GET /v1/models answers with `key`, as any client would call it."""
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_an_admin_makes_a_key_sees_it_once_and_revokes_it(
    keyed: Keyed, console: Console, page: Page, context: BrowserContext
) -> None:
    url = keyed.gateway.url
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.goto(f"{url}/console/")
    _sign_in(page, keyed.admin_key)
    page.get_by_role("link", name="API keys").click()
    expect(page.locator("h1")).to_have_text("API keys")
    expect(page.locator("a[data-nav=keys]")).to_have_attribute("aria-current", "page")
    expect(page.locator("#keys-off")).to_have_count(0)  # this gateway checks keys
    # The console's own admin key is listed, marked as the one this tab uses.
    expect(page.locator("tbody tr", has_text="this tab")).to_contain_text("admin")

    # No name: the form says what is missing and sends nothing.
    page.click("#key-create")
    expect(page.get_by_role("alert")).to_contain_text("Name the key")
    page.fill("#key-name", NAME)
    expect(page.locator("#key-scope-inference")).to_be_checked()
    expect(page.locator("#key-scope-admin")).not_to_be_checked()
    page.click("#key-create")

    box = page.get_by_role("status", name=f"New API key {NAME}")
    expect(box).to_contain_text("It will not be shown again")
    secret = page.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("flk-")
    box.get_by_role("button", name=f"Copy the key of {NAME}").click()
    expect(box.get_by_role("button", name=f"Copy the key of {NAME}")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    # The key shown works: inference only, as chosen.
    assert _models_status(url, secret) == 200
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        admin_call = client.get("/v1/keys", headers={"Authorization": f"Bearer {secret}"})
    assert admin_call.status_code == 403

    row = page.locator("tbody tr", has_text=NAME)
    expect(row).to_contain_text(secret[:10])
    expect(row).to_contain_text("inference")
    expect(row).to_contain_text("active")
    console.screenshot(page, "keys")

    # Shown once: after a reload the key is listed by its prefix alone.
    page.reload()
    expect(row).to_contain_text(secret[:10])
    expect(page.locator("#new-key")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text(secret)

    # Revoking asks first; keeping it leaves the key working.
    row.get_by_role("button", name=f"Revoke {NAME}").click()
    confirm = page.get_by_role("alertdialog", name=f"Revoke {NAME}?")
    expect(confirm).to_contain_text("Clients using it get 401")
    confirm.get_by_role("button", name="Keep it").click()
    expect(confirm).to_be_hidden()
    assert _models_status(url, secret) == 200

    row.get_by_role("button", name=f"Revoke {NAME}").click()
    confirm.get_by_role("button", name="Yes, revoke it").click()
    expect(page.get_by_role("status").filter(has_text=f"Revoked {NAME}")).to_be_visible()
    expect(row).to_contain_text("revoked")
    expect(row.get_by_role("button", name=f"Revoke {NAME}")).to_have_count(0)
    assert _models_status(url, secret) == 401
    # The tab's own key was not touched: the console goes on without asking for another.
    expect(page.locator("#key-dialog")).to_be_hidden()


def test_a_key_without_the_admin_scope_is_told_what_it_lacks(keyed: Keyed, page: Page) -> None:
    page.goto(f"{keyed.gateway.url}/console/keys")
    _sign_in(page, keyed.inference_key)

    expect(page.locator("h1")).to_have_text("API keys")
    expect(page.get_by_role("alert")).to_contain_text(
        "Not allowed with this API key (403): This API key does not have the 'admin' scope"
    )


def test_a_gateway_without_keys_says_it_checks_none(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/keys")

    # The API lists keys there as anywhere (every caller is an admin); the page says why that
    # does not make them needed.
    notice = page.locator("#keys-off")
    expect(notice).to_contain_text("This gateway runs without API keys")
    expect(notice).to_contain_text("the keys below are not checked")
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.get_by_text("No API key yet")).to_be_visible()
    console.screenshot(page, "keys-off", full_page=False)
