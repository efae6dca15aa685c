"""Playwright (Python) driving Debian's chromium against the local stack (what `make
dev` serves) on a free port. No browser download: the system chromium is launched by
path. Without it these tests skip, except under CI=true, where they fail.

Every page records console errors, page errors and dialogs; a test fails if any
appeared (a dialog would mean injected script ran). Screenshots go to
build/screenshots/<name>-<width>.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from llmcredits.local.server import LocalStack

from tests.support import ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "build" / "screenshots"
WIDTHS = (1280, 375)

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests must run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(ROOT / "template.yaml", port=0) as running:
        yield running


@dataclass
class Watched:
    """What a page printed or popped up that a person would call an error."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    #: API paths a test makes fail on purpose (Chromium logs every 4xx as an error).
    expected_failures: list[str] = field(default_factory=list)
    #: Whether this deployment (the stack's template) has no GET route for a URL: the
    #: console asks such a route once, gets the gateway's 404 and says "not available
    #: on this deployment". Chromium logs that 404 too; it is the designed path.
    route_absent: Callable[[str], bool] = lambda url: False

    def expect_failed_request(self, path: str) -> None:
        self.expected_failures.append(path)

    def _expected(self, error: str) -> bool:
        if "Failed to load resource" not in error:
            return False
        if any(path in error for path in self.expected_failures):
            return True
        url = error.rsplit(" at ", 1)[-1]
        return "status of 404" in error and self.route_absent(url)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not self._expected(e)]


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def page(browser: Any, stack: LocalStack, watched: Watched) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  base_url=stack.base_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    watched.route_absent = lambda url: stack.router.match("GET", urlsplit(url).path) is None

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            watched.errors.append(f"console: {msg.text} at {msg.location.get('url', '?')}")

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: watched.errors.append(f"pageerror: {exc}"))
    pg.on("dialog", on_dialog)
    yield pg
    context.close()
    assert watched.dialogs == [], "a dialog opened: injected script ran"
    assert watched.unexpected() == [], "errors in the browser console"


def sign_in(page: Any, user: str, admin: bool = False) -> None:
    """The console's sign-in: PKCE redirect to the local issuer's form and back."""
    page.goto("/console/")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("User name").fill(user)
    if admin:
        page.get_by_label("Admin").check()
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/#/dashboard")
    page.locator("#balance").wait_for()


def screenshot(page: Any, name: str) -> list[Path]:
    """Full-page screenshots of the current page at each width; returns their paths."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)  # one layout pass at the new width
        path = SCREENSHOTS / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        paths.append(path)
    page.set_viewport_size({"width": 1280, "height": 900})
    return paths


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1"))
