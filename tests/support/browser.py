"""A real browser for tests: Debian's headless Chromium driven by Playwright for Python.

Playwright's own browser download is never used (``executable_path`` points at the Debian binary). The flags keep
Chromium off the network: no sync, no component updates, no QUIC, no background requests. Tests that use these
fixtures are skipped, with the reason, only when ``/usr/bin/chromium`` is not installed
(``apt-get install chromium``). Every page fails its test if it logs a JavaScript error or a console error
(a Content-Security-Policy violation, a failed request): what the user would not see must not pass silently.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CDS_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

__all__ = ["ARTIFACTS", "browser", "page", "page_errors", "screenshot"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module. Each module imports these fixtures, which makes each import its own
    fixture: module scope ends one before the next starts (two sync Playwright instances cannot share a thread)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium); the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Console errors and uncaught exceptions of ``page``; a test expecting one removes it from this list."""
    return []


@pytest.fixture
def page(browser, page_errors: list[str]) -> Iterator[object]:
    """A fresh page (its own context: no shared storage); the test fails if ``page_errors`` is not empty."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.on("console", lambda message: page_errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        yield tab
        assert not page_errors, f"the page logged errors: {page_errors}"
    finally:
        context.close()


def screenshot(tab, name: str) -> Path:
    """Save a full-page PNG as a test artifact (``test-artifacts/<name>.png``) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path
