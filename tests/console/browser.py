"""Driving the console in Debian's chromium with Playwright: the pieces the console's tests and
the end-to-end suite (tests/pipeline) share."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    ViewportSize,
    sync_playwright,
)

CHROMIUM = "/usr/bin/chromium"
#: What a page may load: this machine's loopback gateways, and the page's own data.
LOCAL_URLS = ("http://127.0.0.1:", "data:", "blob:", "about:")
#: A laptop's window, and a phone's.
VIEWPORT: ViewportSize = {"width": 1440, "height": 960}
PHONE: ViewportSize = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium, headless (Playwright's own browser download is never used)."""
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        "chromium is needed for the console tests: make system-tools (apt-get install chromium)"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Requests:
    """Every request a browser context made, to check none went to another host."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def record(self, request: Request) -> None:
        self.urls.append(request.url)

    def foreign(self, origin: str) -> list[str]:
        """The requests to anything but `origin` (and the page's own data)."""
        local = (f"{origin}/", "data:", "blob:", "about:")
        return [url for url in self.urls if not url.startswith(local)]

    def off_machine(self) -> list[str]:
        return [url for url in self.urls if not url.startswith(LOCAL_URLS)]


@contextmanager
def laptop(browser: Browser, requests: Requests) -> Iterator[BrowserContext]:
    """A fresh browser profile (no session storage carried over) at a laptop's size, recording
    its requests into `requests`."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.on("request", requests.record)
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@contextmanager
def watched(context: BrowserContext, requests: Requests) -> Iterator[Page]:
    """A page of `context`; a script error in it, or a request off this machine, fails."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: print(f"[browser {message.type}] {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"script errors in the console: {errors}"
    assert not requests.off_machine(), f"requests left this machine: {requests.off_machine()}"


def screenshot(page: Page, directory: Path, name: str, *, full_page: bool = True) -> Path:
    """Save what `page` shows as console-NAME.png in `directory`; `full_page`: the whole page, as
    a window that tall would show it (the sidebar stays in place)."""
    path = directory / f"console-{name}.png"
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight") if full_page else 0
    if size is not None and height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(150)  # charts redraw for the new size
        page.screenshot(path=str(path))
        page.set_viewport_size(size)
    else:
        page.screenshot(path=str(path))
    return path


def screenshot_directory(default: Path) -> Path:
    """FORGELINE_CONSOLE_SCREENSHOTS, or `default`: where tests save the pages they saw."""
    chosen = os.environ.get("FORGELINE_CONSOLE_SCREENSHOTS")
    directory = Path(chosen) if chosen else default
    directory.mkdir(parents=True, exist_ok=True)
    return directory
