"""Console fixtures: one network of real nodes per test process, and a real headless Chromium.

Pages are tested in Debian's Chromium (``/usr/bin/chromium``) driven by Playwright; no browser is
downloaded. Each test gets a fresh browser context (no cookies) at an office PC's 1366×768.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, sync_playwright

from service.clock import utcnow
from service.db import make_engine, transaction
from service.localnet import LocalNode
from service.models import Role
from service.staff.passwords import set_password
from service.staff.service import create_staff
from tests.conftest import FAST, build_network, free_ports

CHROMIUM = "/usr/bin/chromium"
REQUIRE_ENV = "YIPANQI_TEST_REQUIRE_CHROMIUM"
VIEWPORT = {"width": 1366, "height": 768}


@pytest.fixture(scope="session")
def console_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalNode]]:
    """金水区 (host) and 太康县 (origin), trusting each other, with a console login of every role."""
    root = tmp_path_factory.mktemp("console")
    specs = [("410105", "金水区"), ("411627", "太康县")]
    nodes = build_network(root, specs, free_ports(len(specs)), dict(FAST), console_logins=True)
    for node in nodes:
        node.start()
    yield {node.node_id: node for node in nodes}
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def host(console_nodes: dict[str, LocalNode]) -> LocalNode:
    return console_nodes["410105"]


@pytest.fixture(scope="session")
def origin(console_nodes: dict[str, LocalNode]) -> LocalNode:
    return console_nodes["411627"]


def new_login(node: LocalNode, role: Role, *, must_change: bool = False) -> tuple[str, str]:
    """A fresh account of ``role`` with a console password, for a test that changes its state."""
    username = f"{role.value}-{secrets.token_hex(4)}"
    password = f"Yp-{secrets.token_urlsafe(9)}-9a"
    engine = make_engine(node.database_url)
    try:
        with transaction(engine) as tx:
            staff, _token = create_staff(tx, username=username, role=role)
            staff_id = staff.id
        assert staff_id is not None
        set_password(staff_id, password, must_change=must_change, now=utcnow(), engine=engine)
    finally:
        engine.dispose()
    return username, password


# Per module, not per session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is open, and other tests on the same xdist worker call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        reason = f"the console tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(reason)  # CI installs it: missing there is a failure, not a skip
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id="Asia/Shanghai")
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, node: LocalNode, who: Role | tuple[str, str]) -> None:
    """Sign in through the login form, as the node's account of a role or as (user name, password)."""
    username, password = node.logins[who] if isinstance(who, Role) else who
    page.goto(f"{node.url}/console/login")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码", exact=True).fill(password)
    page.get_by_role("button", name="登录").click()
    page.wait_for_load_state()


# What the browser reports about a page: errors, refused content (CSP) and where it sent requests.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (e) => {
  (window.__cspViolations = window.__cspViolations || []).push(e.violatedDirective + " " + e.blockedURI);
});
"""


class PageWatch:
    """Listens to a page from before its first navigation: console errors, uncaught exceptions,
    CSP violations, dialogs (alert, confirm…) and every request URL. ``take()`` returns what was
    seen since the last call and starts afresh, so a test checks page by page."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.add_init_script(CSP_WATCH)
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: self.errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__cspViolations || []")
        return found

    def assert_clean(self, node: LocalNode, where: str, *, status: int = 200) -> None:
        """Nothing went wrong on the page now shown, and it asked only its own node for anything.
        An error page (``status``) is itself reported by Chromium as a failed load: that one is expected."""
        expected = f"the server responded with a status of {status}"
        errors = [
            e for e in self.errors if status == 200 or not (expected in e or e.startswith(f"{status}: "))
        ]
        outside = [
            url
            for url in self.requests
            if not (url.startswith(f"{node.url}/") or url.startswith(("data:", "about:")))
        ]
        problems = {
            "errors": errors,
            "csp": self.csp_violations(),
            "outside requests": outside,
            "dialogs": self.dialogs,
        }
        self.errors, self.requests, self.dialogs = [], [], []
        assert not any(problems.values()), f"{where}: {problems}"
