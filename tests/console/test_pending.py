"""待办 in a real Chromium: incoming 协查 and 通报 in one list by deadline, overdue and due-soon marks,
counts, filters, keyset pages, 领取 and 指派, and the 通报 page with its 接收确认 (once)."""

from __future__ import annotations

from datetime import timedelta

from playwright.sync_api import Page, expect

from service.clock import utcnow
from service.localnet import LocalNode, wait_for
from service.models import Role, VerificationCase
from tests.console.conftest import new_login, sign_in
from tests.console.test_cases import (
    arrived_case,
    arrived_notification,
    csrf,
    send_case,
    send_notification,
    set_due,
)


def row_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#pending tbody tr", "rows => rows.map(r => r.dataset.kind + ':' + r.dataset.id)"
    )
    return ids


def test_pending_lists_by_deadline_with_marks_and_filters(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    now = utcnow()
    sent = [send_case(host, origin, topic="reward_eligibility", key_target=True) for _ in range(3)]
    later, overdue, soon = (arrived_case(origin, s["request_id"]) for s in sent)
    set_due(origin, VerificationCase, overdue, now - timedelta(days=2))
    set_due(origin, VerificationCase, soon, now + timedelta(days=1))
    sign_in(page, origin, Role.operator)
    page.get_by_role("link", name="待办").first.click()
    expect(page).to_have_url(f"{origin.url}/console/pending")
    expect(page.get_by_role("heading", level=1)).to_have_text("待办")
    assert int(page.locator("#count-overdue").inner_text()) >= 1
    assert int(page.locator("#count-soon").inner_text()) >= 1

    # Filter through the form: 协查事项 and 重点服务对象.
    page.get_by_label("协查事项").select_option(label="奖励扶助资格")
    page.get_by_label("仅重点服务对象").check()
    page.get_by_role("button", name="筛选").click()
    assert "topic=reward_eligibility" in page.url
    assert "key=1" in page.url
    ids = row_ids(page)
    assert ids.index(f"case:{overdue}") < ids.index(f"case:{soon}") < ids.index(f"case:{later}")
    expect(page.locator(f'tr[data-id="{overdue}"][data-kind="case"]')).to_have_class("overdue")
    expect(page.locator(f'tr[data-id="{overdue}"][data-kind="case"]')).to_contain_text("已超期")
    expect(page.locator(f'tr[data-id="{soon}"][data-kind="case"]')).to_have_class("due-soon")
    expect(page.locator(f'tr[data-id="{soon}"][data-kind="case"]')).to_contain_text("即将到期")
    expect(page.locator(f'tr[data-id="{later}"][data-kind="case"]')).not_to_contain_text("到期")
    # Masked ID numbers only.
    for s in sent:
        assert s["sent_subject"]["id_number"] not in page.content()
    page.goto(f"{origin.url}/console/pending?topic=reward_eligibility&key=1&due=overdue")
    assert f"case:{overdue}" in row_ids(page)
    assert f"case:{soon}" not in row_ids(page)
    page.goto(f"{origin.url}/console/pending?type=notice&topic=reward_eligibility")
    assert row_ids(page) == []  # a 协查 topic with 通报 only: nothing

    # 领取 from the list; "我的" then shows it; one click opens the case.
    row = page.locator(f'tr[data-id="{later}"][data-kind="case"]')
    page.goto(f"{origin.url}/console/pending?topic=reward_eligibility")
    row.get_by_role("button", name="领取").click()
    expect(page).to_have_url(f"{origin.url}/console/pending?topic=reward_eligibility")
    username = origin.logins[Role.operator][0]
    expect(row).to_contain_text(username)
    expect(row.get_by_role("button", name="领取")).to_have_count(0)
    page.get_by_label("经办人").select_option(label="我的")
    page.get_by_role("button", name="筛选").click()
    assert f"case:{later}" in row_ids(page)
    assert f"case:{overdue}" not in row_ids(page)
    row.get_by_role("link").first.click()
    expect(page).to_have_url(f"{origin.url}/console/cases/{later}")
    expect(page.locator("#assigned-to")).to_have_text(username)


def test_an_operator_takes_but_only_a_supervisor_assigns_to_others(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    out = send_case(host, origin, topic="contraception")
    case_id = arrived_case(origin, out["request_id"])
    operator = origin.logins[Role.operator][0]
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/pending?topic=contraception")
    row = page.locator(f'tr[data-id="{case_id}"][data-kind="case"]')
    expect(row.get_by_role("button", name="领取")).to_be_visible()
    expect(row.get_by_role("button", name="指派")).to_have_count(0)
    # The POST itself: an operator may not assign to someone else.
    supervisor = origin.logins[Role.supervisor][0]
    refused = page.request.post(
        f"{origin.url}/console/cases/{case_id}/assign", form={"csrftoken": csrf(page), "assignee": supervisor}
    )
    assert refused.status == 403

    page.context.clear_cookies()
    sign_in(page, origin, Role.supervisor)
    page.goto(f"{origin.url}/console/pending?topic=contraception")
    row.get_by_label("指派给").select_option(operator)
    row.get_by_role("button", name="指派").click()
    expect(row).to_contain_text(operator)
    # An auditor is not someone to assign to (refused by the service too).
    auditor = origin.logins[Role.auditor][0]
    bad = page.request.post(
        f"{origin.url}/console/cases/{case_id}/assign", form={"csrftoken": csrf(page), "assignee": auditor}
    )
    assert bad.status == 422
    assert "所选人员不是在岗的经办人或负责人。" in bad.text()


def test_keyset_pages_of_fifty(page: Page, host: LocalNode, origin: LocalNode) -> None:
    sent = [send_case(host, origin, topic="record_accuracy") for _ in range(51)]
    expected = {f"case:{arrived_case(origin, s['request_id'])}" for s in sent}
    sign_in(page, origin, Role.auditor)  # every role reads the list
    page.goto(f"{origin.url}/console/pending?topic=record_accuracy")
    first = row_ids(page)
    assert len(first) == 50
    expect(page.get_by_role("button", name="领取")).to_have_count(0)  # an auditor takes nothing
    page.get_by_role("link", name="下一页").click()
    assert "after=" in page.url
    assert "topic=record_accuracy" in page.url
    second = row_ids(page)
    expect(page.get_by_role("link", name="下一页")).to_have_count(0)
    assert not set(first) & set(second)
    assert set(first) | set(second) >= expected
    assert len(second) == len(set(first) | set(second)) - 50
    page.get_by_role("link", name="回到第一页").click()
    assert row_ids(page) == first
    page.goto(f"{origin.url}/console/pending?after=not-a-cursor&topic=record_accuracy")
    assert row_ids(page) == first  # a bad cursor starts from the top


def test_notification_page_confirms_once(page: Page, host: LocalNode, origin: LocalNode) -> None:
    out = send_notification(host, origin)
    item_id = arrived_notification(origin, out["message_id"])
    username, password = new_login(origin, Role.operator)
    sign_in(page, origin, (username, password))
    page.goto(f"{origin.url}/console/pending?type=notice&kind=pregnancy")
    row = page.locator(f'tr[data-id="{item_id}"][data-kind="notice"]')
    expect(row).to_contain_text("妊娠")
    expect(row).to_contain_text("待确认")
    row.get_by_role("button", name="领取").click()
    expect(row).to_contain_text(username)
    row.get_by_role("link").first.click()
    expect(page).to_have_url(f"{origin.url}/console/notifications/{item_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("通报：妊娠")
    expect(page.locator("#details")).to_contain_text("孕周")
    expect(page.locator("#history")).to_contain_text("签名已验证")
    token = csrf(page)
    page.get_by_role("button", name="接收确认").click()
    expect(page.locator("#notice")).to_have_text("已确认接收，确认已发给对方。")
    again = page.request.post(f"{origin.url}/console/notifications/{item_id}/ack", form={"csrftoken": token})
    assert again.status == 409
    assert "该通报已确认接收，不能重复确认。" in again.text()
    page.goto(f"{origin.url}/console/pending?type=notice&kind=pregnancy")
    expect(page.locator(f'tr[data-id="{item_id}"][data-kind="notice"]')).to_have_count(0)

    def acknowledged() -> bool:
        read = host.api("GET", f"/api/v1/notifications/{out['id']}").json()
        return bool(read["status"] == "acknowledged")

    wait_for(acknowledged)
