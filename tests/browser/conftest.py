"""A real headless Chromium (Debian's `chromium` package) driven by Playwright.

Playwright's sync API cannot run inside an asyncio loop, so the browser tests
are plain sync functions. Missing Chromium fails them loudly: test.sh
installs it.
"""

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support.processes import ARTIFACTS

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Waits end on DOM conditions; this only bounds how long a broken page is waited for.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def chromium():
    """One browser per test module: Playwright's sync API keeps its own asyncio
    loop current while it runs, which the async tests elsewhere must not meet."""
    assert CHROMIUM.exists(), (f"{CHROMIUM} is missing: the browser tests need Debian's "
                               "chromium package (./test.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, request):
    """A fresh browser context and page; a screenshot of it is kept in
    test-artifacts/ after the test, and an uncaught page error fails the test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    if not page.is_closed():
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
