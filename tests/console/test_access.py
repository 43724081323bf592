"""Keys and boundaries of the console: a gateway with keys asks for one and names a wrong one,
admin pages say when a key lacks the admin scope, and nothing the console does reaches another
host (its Content-Security-Policy allows only the gateway's origin)."""

from __future__ import annotations

import httpx
from playwright.sync_api import Browser, Page, expect

from .browser import PHONE, Requests
from .conftest import Console, Keyed

PAGES = ("", "jobs", "jobs/new", "datasets", "registry", "deployments", "playground", "keys")


def test_with_keys_the_console_asks_for_one_and_says_why_one_fails(
    keyed: Keyed, console: Console, page: Page
) -> None:
    page.goto(f"{keyed.gateway.url}/console/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()

    page.fill("#key-input", "flk-not-a-key")
    page.click("#key-submit")

    error = page.locator("#key-error")
    expect(error).to_contain_text("This key was not accepted (401)")
    expect(error).to_contain_text("Incorrect API key provided")
    expect(dialog).to_be_visible()
    # The pages behind go on getting 401s; the dialog keeps saying why the key failed.
    page.evaluate(
        """() => window.dispatchEvent(new CustomEvent("forgeline:unauthorized",
            {detail: {message: "You didn't provide an API key."}}))"""
    )
    expect(error).to_contain_text("This key was not accepted (401)")
    console.screenshot(page, "key", full_page=False)

    page.fill("#key-input", keyed.inference_key)
    page.click("#key-submit")

    expect(dialog).to_be_hidden()
    expect(page.locator("#key-status")).to_contain_text("API key")
    stored = page.evaluate("sessionStorage.getItem('forgeline.console.apiKey')")
    assert stored == keyed.inference_key
    assert page.evaluate("localStorage.length") == 0  # kept for this tab only
    # An admin page with a key that has only the inference scope says what is missing.
    page.click("a[data-nav=jobs]")
    expect(page.get_by_role("alert")).to_contain_text(
        "Not allowed with this API key (403): This API key does not have the 'admin' scope"
    )
    console.screenshot(page, "admin-scope", full_page=False)

    # Another key, from the notice: an admin key reaches the jobs (not configured on this gateway).
    page.get_by_role("button", name="Use another API key").click()
    page.fill("#key-input", keyed.admin_key)
    page.click("#key-submit")

    expect(dialog).to_be_hidden()
    expect(page.get_by_role("alert")).to_contain_text(
        "fine-tuning is not configured on this gateway"
    )
    page.reload()
    expect(page.locator("h1")).to_have_text("Fine-tuning jobs")
    expect(dialog).to_be_hidden()  # asked once per browser session
    assert page.evaluate("sessionStorage.getItem('forgeline.console.apiKey')") == keyed.admin_key


def test_no_request_leaves_for_another_host(
    console: Console, page: Page, requests: Requests
) -> None:
    for path in PAGES:
        response = page.goto(f"{console.url}/console/{path}")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        page.wait_for_load_state("networkidle")

    assert requests.urls
    assert requests.foreign(console.url) == []
    assert any(url.endswith("/console/assets/main.js") for url in requests.urls)


def test_every_page_fits_a_phone(console: Console, browser: Browser) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True)
    try:
        page = context.new_page()
        for path in PAGES:
            page.goto(f"{console.url}/console/{path}")
            page.wait_for_load_state("networkidle")
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"/console/{path} is {overflow}px wider than a phone"
            name = path.replace("/", "-") or "overview"
            console.screenshot(page, f"phone-{name}", full_page=False)
    finally:
        context.close()


def test_the_console_is_served_as_files_outside_the_api(console: Console) -> None:
    with httpx.Client(base_url=console.url, trust_env=False, timeout=10) as client:
        assert client.get("/console").headers["location"] == "/console/"
        page = client.get("/console/jobs/ftjob-anything")
        script = client.get("/console/assets/main.js")
        missing = client.get("/console/assets/nothing.js")
        document = client.get("/openapi.json").json()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/console/assets/main.js">' in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    assert missing.status_code == 404
    assert not [path for path in document["paths"] if path.startswith("/console")]
