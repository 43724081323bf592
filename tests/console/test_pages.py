"""The console's pages in a real headless Chromium against a real gateway: the overview, the
playground streaming from the tiny model on llama-server, the new fine-tune form, the datasets
page with the Files API's own checks, and a job page drawing its curves as events arrive."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Page, expect

from .conftest import Console


def test_the_overview_lists_the_deployed_model(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/")

    deployments = page.locator("section.card", has=page.get_by_role("heading", name="Deployments"))
    expect(deployments.locator("tbody tr")).to_have_count(2)
    expect(deployments).to_contain_text("tiny-twin")
    expect(deployments.locator(".badge-ok").first).to_have_text("ready")
    models = page.locator("section.card", has=page.get_by_role("heading", name="Models served"))
    expect(models.locator("tbody tr").first).to_contain_text("tiny")
    expect(models).to_contain_text("tiny-llama")
    registered = page.locator(
        "section.card", has=page.get_by_role("heading", name="Recent in the registry")
    )
    expect(registered.get_by_role("link", name="tiny-llama", exact=True)).to_be_visible()
    expect(page.locator(".tile").first).to_contain_text("Healthy")
    expect(page.locator("#key-status")).to_contain_text("no API key needed")
    console.screenshot(page, "overview")


def test_the_playground_streams_answers_from_the_tiny_model(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/playground?model=tiny")
    expect(page.locator("#model-a")).to_have_value("tiny")
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Hello there")
    # Count the answer's updates as the page receives them: a streamed answer grows chunk by chunk.
    page.evaluate(
        """() => {
            window.answerUpdates = 0;
            new MutationObserver(() => (window.answerUpdates += 1)).observe(
                document.querySelector(".chat-column[data-slot=a] .messages"),
                {subtree: true, childList: true, characterData: true});
        }"""
    )

    with page.expect_response("**/v1/chat/completions") as answered:
        page.keyboard.press("Enter")

    response = answered.value
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = json.loads(response.request.post_data or "{}")
    assert (sent["model"], sent["stream"], sent["max_tokens"]) == ("tiny", True, 24)
    assert sent["messages"] == [{"role": "user", "content": "Hello there"}]
    answer = page.locator(".chat-column[data-slot=a] .message.assistant")
    expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
    assert answer.locator(".message-text").inner_text().strip()
    assert page.evaluate("window.answerUpdates") > 4
    expect(page.locator(".chat-column[data-slot=a] .column-stats")).to_contain_text("tokens")

    # Side by side: the same question to two models, both answers streamed into their columns.
    page.check("#compare")
    page.select_option("#model-b", "tiny-twin")
    page.fill("#system-prompt", "Answer briefly.")
    page.fill("#prompt", "Name a colour.")
    page.click("#send")

    for slot in ("a", "b"):
        last = page.locator(f".chat-column[data-slot={slot}] .message.assistant").last
        expect(last).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator(".chat-column[data-slot=b] .message.user")).to_have_text(
        re.compile("Name a colour")
    )
    console.screenshot(page, "playground", full_page=False)
