"""Every console page, for every role, on both nodes, in a real Chromium: each answers 200 in
Chinese (``<html lang="zh-CN">``, an ``<h1>``), with no script error, no CSP violation and no
request to anywhere but the node itself; the admin pages are a Chinese 403 for everyone else.

A full-page screenshot of each page is saved under ``test-artifacts/console/`` to look at."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from service.clock import utcnow
from service.localnet import LocalNode
from service.models import Role, VerificationCase
from tests.console.conftest import PageWatch, sign_in
from tests.console.test_cases import (
    arrived_case,
    arrived_notification,
    send_case,
    send_notification,
    set_due,
)
from tests.console.test_people import a_name, new_number, register
from tests.console.test_stats import last_month

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "console"
ADMIN_PAGES = ("/console/admin", "/console/admin/staff", "/console/admin/peers", "/console/admin/status")


@dataclass(frozen=True)
class Pages:
    """Pages with data behind them at one node, by a short name for the screenshot's file."""

    node: LocalNode
    details: dict[str, str]


@pytest.fixture(scope="module")
def pages(host: LocalNode, origin: LocalNode) -> dict[str, Pages]:
    """A 协查 and a 通报 from 金水区 to 太康县 (outgoing at host, incoming at origin), and a person
    on each node."""
    sent = send_case(host, origin, priority="urgent", key_target=True, reference="EVERY-PAGE-1")
    notified = send_notification(host, origin)
    case_at_origin = arrived_case(origin, sent["request_id"])
    # A fuller 待办 for the README's picture: one overdue, one due tomorrow, one later.
    topics = ("contraception", "birth_registration", "record_accuracy")
    more = [send_case(host, origin, topic=topic) for topic in topics]
    now = utcnow()
    for item, due in zip(more, (now - timedelta(days=2), now + timedelta(days=1), None), strict=True):
        if due is not None:
            set_due(origin, VerificationCase, arrived_case(origin, item["request_id"]), due)
    notification_at_origin = arrived_notification(origin, notified["message_id"])
    person_at_host = register(host, new_number(), a_name())
    person_at_origin = register(origin, new_number(), a_name(), origin_node="411627")
    month = last_month()
    return {
        "host": Pages(
            host,
            {
                "case": f"/console/cases/{sent['id']}",
                "notification": f"/console/notifications/{notified['id']}",
                "person": f"/console/people/{person_at_host}",
                "report": f"/console/stats/{month}",
                "report-print": f"/console/stats/{month}/print",
            },
        ),
        "origin": Pages(
            origin,
            {
                "case": f"/console/cases/{case_at_origin}",
                "notification": f"/console/notifications/{notification_at_origin}",
                "person": f"/console/people/{person_at_origin}",
                "report": f"/console/stats/{month}",
                "report-print": f"/console/stats/{month}/print",
            },
        ),
    }


def slug(path: str) -> str:
    """``/console/admin/staff`` → ``admin-staff``; ``/console/`` → ``home``."""
    return path.removeprefix("/console").strip("/").replace("/", "-") or "home"


def check_page(page: Page, watch: PageWatch, node: LocalNode, path: str, shot: Path | None) -> None:
    answer = page.goto(f"{node.url}{path}")
    assert answer is not None
    assert answer.status == 200, path
    page.wait_for_load_state("load")
    assert page.locator("html").get_attribute("lang") == "zh-CN", path
    expect(page.locator("h1")).to_have_count(1)
    assert (page.locator("h1").text_content() or "").strip(), path
    watch.assert_clean(node, path)
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)


@pytest.mark.parametrize("role", [Role.operator, Role.supervisor, Role.auditor, Role.admin])
@pytest.mark.parametrize("where", ["host", "origin"])
def test_every_page_is_clean_for_every_role_on_both_nodes(
    page: Page, pages: dict[str, Pages], where: str, role: Role
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    node, details = pages[where].node, pages[where].details
    watch = PageWatch(page)
    sign_in(page, node, role)
    expect(page).to_have_url(f"{node.url}/console/")
    watch.assert_clean(node, "sign-in")

    menu = page.get_by_role("navigation", name="主菜单").get_by_role("link")
    hrefs = list(menu.evaluate_all("links => links.map(a => a.getAttribute('href'))"))
    assert hrefs, "an empty main menu"
    assert all(h.startswith("/console/") for h in hrefs), hrefs
    admin_in_menu = "/console/admin" in hrefs
    assert admin_in_menu == (role == Role.admin)
    visits = ["/console/", *hrefs, "/console/password", *details.values()]
    if role == Role.admin:
        visits += [p for p in ADMIN_PAGES if p not in visits]
    if role != Role.auditor:
        visits.append("/console/people/import")
    for path in visits:
        check_page(page, watch, node, path, ARTIFACTS / f"{where}-{role.value}-{slug(path)}.png")
        if path in hrefs:  # the menu marks where one is
            current = page.get_by_role("navigation", name="主菜单").locator("a[aria-current=page]")
            expect(current).to_have_attribute("href", path)

    if role != Role.admin:  # what this role must not open: the Chinese 403 page, still clean
        for path in [*ADMIN_PAGES, *(["/console/people/import"] if role == Role.auditor else [])]:
            answer = page.goto(f"{node.url}{path}")
            assert answer is not None
            assert answer.status == 403, path
            assert page.locator("html").get_attribute("lang") == "zh-CN"
            expect(page.get_by_role("heading", level=1)).to_have_text("无权访问")
            expect(page.locator("main")).to_contain_text("您的角色无权")
            watch.assert_clean(node, f"403 {path}", status=403)

    # The few README pictures: the viewport (1366×768) as an office PC shows it.
    if where == "origin" and role == Role.operator:
        for name, path in (("pending", "/console/pending"), ("case", details["case"])):
            page.goto(f"{node.url}{path}")
            page.screenshot(path=str(ARTIFACTS / f"readme-{name}.png"), type="png")
    if where == "host" and role == Role.supervisor:
        page.goto(f"{node.url}/console/stats")
        page.screenshot(path=str(ARTIFACTS / "readme-stats.png"), type="png")
    assert not re.search(r"\d{17}[\dX]", page.url)  # no ID number ever in a URL
