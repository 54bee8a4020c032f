"""What nobody may slip into a page: markup in a field, in a peer's message or in a staff reply is
shown as text and never run; a forged or ended session cookie leads to the login page; a form
with a wrong CSRF token is a Chinese 403 that changes nothing."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import update
from sqlmodel import col, select

from service.clock import utcnow
from service.console.auth import COOKIE
from service.db import make_engine, transaction
from service.localnet import LocalNode, wait_for
from service.models import ConsoleSession, Role, Staff, VerificationCase
from tests.console.conftest import PageWatch, sign_in
from tests.console.test_cases import arrived_case, arrived_notification, send_case, set_due, subject

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
SVG = '"><svg onload=window.__xss=3>'
ALL = f"{SCRIPT} {IMG} {SVG}"


def marked_subject() -> dict[str, str]:
    return {**subject(), "name": IMG}


def send_marked_notification(notifier: LocalNode, receiver: LocalNode) -> dict[str, Any]:
    """A 健康档案转移 通报: the one kind whose details are free text."""
    body = {
        "recipient": receiver.node_id,
        "subject": {**subject(), "name": SCRIPT},
        "kind": "health_record_transfer",
        "occurred_on": "2026-05-20",
        "details": {"record_no": SVG, "institution": f"{SCRIPT}{IMG}", "transferred_on": "2026-05-20"},
    }
    response = notifier.api("POST", "/api/v1/notifications", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_not_run(page: Page, watch: PageWatch, node: LocalNode, where: str) -> None:
    assert page.evaluate("window.__xss") is None, where
    assert page.locator("main script:not([src]), main img[src=x], main svg[onload]").count() == 0, where
    watch.assert_clean(node, where)


def visit(page: Page, node: LocalNode, path: str) -> None:
    answer = page.goto(f"{node.url}{path}")
    assert answer is not None
    assert answer.status == 200, path


def test_markup_from_staff_and_from_a_peer_is_shown_as_text_and_never_run(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    # Unanswered, so in origin's 待办; and answered by origin with markup in the findings.
    waiting = send_case(host, origin, subject=marked_subject(), question=ALL, reference=SVG[:64])
    answered = send_case(host, origin, subject={**subject(), "name": SVG}, question=ALL, reference=SCRIPT)
    notified = send_marked_notification(host, origin)
    waiting_at_origin = arrived_case(origin, waiting["request_id"])
    answered_at_origin = arrived_case(origin, answered["request_id"])
    notification_at_origin = arrived_notification(origin, notified["message_id"])
    set_due(origin, VerificationCase, waiting_at_origin, utcnow() - timedelta(days=400))  # first in 待办
    ack = origin.api("POST", f"/api/v1/verification-requests/{answered_at_origin}/ack", json={})
    assert ack.status_code == 200, ack.text
    reply = origin.api(
        "POST",
        f"/api/v1/verification-requests/{answered_at_origin}/reply",
        json={"outcome": "confirmed", "findings": f"核实无误。{ALL}"},
    )
    assert reply.status_code == 200, reply.text

    watch = PageWatch(page)
    sign_in(page, origin, Role.operator)
    visit(page, origin, "/console/pending")
    row = page.locator(f'#pending tr[data-kind="case"][data-id="{waiting_at_origin}"]')
    expect(row).to_contain_text(IMG)
    assert_not_run(page, watch, origin, "origin 待办")

    visit(page, origin, f"/console/cases/{waiting_at_origin}")
    expect(page.locator("main")).to_contain_text(IMG)
    expect(page.locator("#question")).to_contain_text(SCRIPT)
    expect(page.locator("#question")).to_contain_text(IMG)
    expect(page.locator("#question")).to_contain_text(SVG)
    assert_not_run(page, watch, origin, "origin case")

    visit(page, origin, f"/console/cases/{answered_at_origin}")
    expect(page.locator("main")).to_contain_text(f"核实无误。{SCRIPT}")
    assert_not_run(page, watch, origin, "origin answered case")

    visit(page, origin, f"/console/notifications/{notification_at_origin}")
    expect(page.locator("main")).to_contain_text(SCRIPT)
    expect(page.locator("main")).to_contain_text(SVG)
    expect(page.locator("main")).to_contain_text(IMG)
    assert_not_run(page, watch, origin, "origin 通报")

    visit(page, origin, "/console/warnings")
    assert_not_run(page, watch, origin, "origin 预警")

    # At the sender: its own text, and the peer's reply as it arrived.
    host_page = page.context.new_page()
    host_watch = PageWatch(host_page)
    sign_in(host_page, host, Role.supervisor)
    visit(host_page, host, "/console/outgoing")
    expect(host_page.locator(f"#case-{waiting['id']}")).to_contain_text(IMG)
    expect(host_page.locator(f"#notification-{notified['id']}")).to_contain_text(SCRIPT)
    assert_not_run(host_page, host_watch, host, "host 已发")

    def replied() -> bool:
        case = host.api("GET", f"/api/v1/verification-requests/{answered['id']}").json()
        return case["findings"] is not None

    wait_for(replied)
    visit(host_page, host, f"/console/cases/{answered['id']}")
    expect(host_page.locator("main")).to_contain_text(SVG)
    expect(host_page.locator("main")).to_contain_text(f"核实无误。{SCRIPT}")
    expect(host_page.locator("main")).to_contain_text(IMG)
    assert_not_run(host_page, host_watch, host, "host case with the peer's reply")

    visit(host_page, host, f"/console/notifications/{notified['id']}")
    expect(host_page.locator("main")).to_contain_text(SVG)
    assert_not_run(host_page, host_watch, host, "host 通报")

    visit(host_page, host, "/console/warnings")
    assert_not_run(host_page, host_watch, host, "host 预警")
    assert watch.dialogs == []
    assert host_watch.dialogs == []


def test_markup_in_a_reply_typed_in_the_console_is_shown_as_text(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    sent = send_case(host, origin)
    case_id = arrived_case(origin, sent["request_id"])
    watch = PageWatch(page)
    sign_in(page, origin, Role.operator)
    visit(page, origin, f"/console/cases/{case_id}")
    page.get_by_role("button", name="签收").click()
    expect(page.locator("#notice")).to_have_text("已签收，签收回执已发给对方。")
    page.get_by_label("核实结果").select_option(label="属实")
    page.get_by_label("核实情况").fill(f"已核实。{ALL}")
    page.get_by_role("button", name="发送反馈").click()
    expect(page.locator("#notice")).to_have_text("已反馈，答复已发给对方。")
    expect(page.locator("main")).to_contain_text(f"已核实。{SCRIPT}")
    expect(page.locator("main")).to_contain_text(SVG)
    assert_not_run(page, watch, origin, "after the reply")


def test_a_forged_cookie_and_an_ended_session_go_to_the_login_page(
    page: Page, context: BrowserContext, host: LocalNode
) -> None:
    forged = {"name": COOKIE, "value": secrets.token_urlsafe(32), "domain": "127.0.0.1", "path": "/console"}
    context.add_cookies([forged])  # type: ignore[list-item]
    page.goto(f"{host.url}/console/pending")
    expect(page).to_have_url(f"{host.url}/console/login?next=/console/pending")
    expect(page.get_by_role("heading", level=1)).to_contain_text("登录")

    sign_in(page, host, Role.operator)
    expect(page).to_have_url(f"{host.url}/console/")
    engine = make_engine(host.database_url)
    try:
        with transaction(engine) as tx:  # every open session of the account: ended (as a revocation does)
            staff = host.logins[Role.operator][0]
            staff_id = tx.exec(select(Staff.id).where(Staff.username == staff)).one()
            tx.exec(
                update(ConsoleSession)
                .where(col(ConsoleSession.staff_id) == staff_id, col(ConsoleSession.ended_at).is_(None))
                .values(ended_at=utcnow())
            )
    finally:
        engine.dispose()
    page.goto(f"{host.url}/console/outgoing")
    expect(page).to_have_url(f"{host.url}/console/login?next=/console/outgoing")


def test_a_wrong_csrf_token_is_a_chinese_403_and_changes_nothing(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    sent = send_case(host, origin)
    case_id = arrived_case(origin, sent["request_id"])
    sign_in(page, origin, Role.operator)
    visit(page, origin, f"/console/cases/{case_id}")
    page.evaluate(
        "() => document.querySelectorAll('input[name=csrftoken]').forEach(i => i.value = 'forged-token')"
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="签收").click()
    assert posted.value.status == 403
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.locator("main")).to_contain_text("安全校验未通过")
    case = origin.api("GET", f"/api/v1/verification-requests/{case_id}").json()
    assert case["status"] == "received"
    assert case["acknowledged_at"] is None
