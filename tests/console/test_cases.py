"""The 协查 case page in a real Chromium: facts, deadline, history, 签收 and 反馈 (exactly once),
revealing the ID number with a reason, the print view, and the refusals (403, 404, 409, 422).

A 协查 sent by ``host`` through its staff API arrives at ``origin`` as incoming: origin's staff
answer it in the console, and host's staff API shows what arrived."""

from __future__ import annotations

import random
from datetime import date, datetime
from typing import Any

from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import update
from sqlmodel import col, select

from service import idnumbers
from service.db import make_engine, read_session, transaction
from service.localnet import LocalNode, wait_for
from service.models import Notification, Role, VerificationCase
from tests.console.conftest import sign_in

NAMES = "王李张刘陈杨赵黄周吴"


def subject() -> dict[str, str]:
    """A fresh subject with a valid ID number (GB 11643) from the origin county, born in 1990."""
    rng = random.SystemRandom()
    born = date(1990, rng.randint(1, 12), rng.randint(1, 28))
    first17 = f"411627{born:%Y%m%d}{rng.randint(0, 999):03d}"
    number = first17 + idnumbers.check_character(first17)
    return {
        "id_number": number,
        "name": rng.choice(NAMES) + "测试",
        "sex": idnumbers.sex(number),
        "birth_date": born.isoformat(),
    }


def send_case(asker: LocalNode, answerer: LocalNode, **extra: Any) -> dict[str, Any]:
    body = {
        "recipient": answerer.node_id,
        "subject": subject(),
        "topic": "marital_status",
        "question": "请核实该对象的婚姻状况及生育情况。",
        **extra,
    }
    response = asker.api("POST", "/api/v1/verification-requests", json=body)
    assert response.status_code == 201, response.text
    return {**response.json(), "sent_subject": body["subject"]}


def send_notification(notifier: LocalNode, receiver: LocalNode) -> dict[str, Any]:
    body = {
        "recipient": receiver.node_id,
        "subject": subject(),
        "kind": "pregnancy",
        "occurred_on": "2026-05-20",
        "details": {"confirmed_on": "2026-05-20", "weeks": 8},
    }
    response = notifier.api("POST", "/api/v1/notifications", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def arrived_case(node: LocalNode, request_id: str) -> int:
    """The id of the incoming case at ``node`` once the request has arrived."""

    def look() -> int | None:
        engine = make_engine(node.database_url)
        try:
            with read_session(engine) as session:
                row = session.exec(
                    select(VerificationCase).where(VerificationCase.request_message_id == request_id)
                ).first()
                return row.id if row is not None else None
        finally:
            engine.dispose()

    found: int = wait_for(look)
    return found


def arrived_notification(node: LocalNode, message_id: str) -> int:
    def look() -> int | None:
        engine = make_engine(node.database_url)
        try:
            with read_session(engine) as session:
                row = session.exec(select(Notification).where(Notification.message_id == message_id)).first()
                return row.id if row is not None else None
        finally:
            engine.dispose()

    found: int = wait_for(look)
    return found


def set_due(
    node: LocalNode, model: type[VerificationCase] | type[Notification], item_id: int, due: datetime
) -> None:
    """Test set-up: move an item's deadline (the nodes share the pinned clock, not the dates)."""
    engine = make_engine(node.database_url)
    try:
        with transaction(engine) as tx:
            tx.exec(update(model).where(col(model.id) == item_id).values(due_at=due))  # type: ignore[call-overload]
    finally:
        engine.dispose()


def csrf(page: Page) -> str:
    """The form token of the page (every page has one: the sign-out form)."""
    return page.locator("input[name=csrftoken]").first.input_value()


def case_at_host(host: LocalNode, request_id: str) -> dict[str, Any] | None:
    items = host.api(
        "GET", "/api/v1/verification-requests", params={"direction": "outgoing", "page_size": 200}
    ).json()["items"]
    found = next((c for c in items if c["request_id"] == request_id), None)
    if found is None:
        return None
    return host.api("GET", f"/api/v1/verification-requests/{found['id']}").json()  # type: ignore[no-any-return]


def test_operator_acknowledges_and_replies_once_even_from_two_tabs(
    page: Page, context: BrowserContext, host: LocalNode, origin: LocalNode
) -> None:
    out = send_case(host, origin, priority="urgent", key_target=True, reference="JS-2026-7788")
    case_id = arrived_case(origin, out["request_id"])
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/cases/{case_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("协查：婚育情况")
    expect(page.locator("#question")).to_contain_text("请核实该对象的婚姻状况及生育情况。")
    expect(page.locator("#question")).to_contain_text("金水区（410105）")
    expect(page.locator("#question")).to_contain_text("紧急")
    expect(page.locator("#question")).to_contain_text("JS-2026-7788")
    number = out["sent_subject"]["id_number"]
    expect(page.locator("#masked-id")).to_have_text(idnumbers.mask(number))
    assert number not in page.content()
    deadline = page.locator("#deadline")
    expect(deadline).to_contain_text("收到之日起 15 天")
    expect(deadline).to_contain_text("24:00")
    expect(deadline).to_contain_text("剩余")
    history = page.locator("#history")
    expect(history).to_contain_text("协查请求")
    expect(history).to_contain_text("签名已验证")
    expect(history).to_contain_text("410105/")  # the sender's keyid

    # 签收 with a promised date.
    page.get_by_label("预计反馈日期（可不填）").fill("2026-06-20")
    page.get_by_role("button", name="签收").click()
    expect(page.locator("#notice")).to_have_text("已签收，签收回执已发给对方。")
    expect(page.get_by_role("heading", level=1)).to_contain_text("待反馈")
    wait_for(lambda: (c := case_at_host(host, out["request_id"])) and c["status"] == "acknowledged")

    # A second tab with the same form, open before the first reply.
    other = context.new_page()
    other.goto(f"{origin.url}/console/cases/{case_id}")
    token = csrf(page)
    page.get_by_label("核实结果").select_option(label="属实")
    page.get_by_label("核实情况").fill("已婚，一孩，与户籍信息一致。")
    page.get_by_role("button", name="发送反馈").dblclick()  # a double click sends it once
    expect(page.locator("#notice")).to_have_text("已反馈，答复已发给对方。")
    expect(page.locator("#reply")).to_contain_text("已婚，一孩，与户籍信息一致。")
    expect(page.locator("#reply-form")).to_have_count(0)

    other.get_by_label("核实结果").select_option(label="不属实")
    other.get_by_label("核实情况").fill("第二次反馈。")
    other.get_by_role("button", name="发送反馈").click()
    expect(other.get_by_role("alert")).to_have_text("该协查已反馈，不能重复反馈。")

    # The same form sent again with the same CSRF token (a browser's "resend").
    again = page.request.post(
        f"{origin.url}/console/cases/{case_id}/reply",
        form={"csrftoken": token, "outcome": "confirmed", "findings": "已婚，一孩，与户籍信息一致。"},
        max_redirects=0,
    )
    assert again.status == 409
    assert "该协查已反馈，不能重复反馈。" in again.text()

    answered = wait_for(
        lambda: (c := case_at_host(host, out["request_id"])) and c["status"] == "answered" and c
    )
    replies = [m for m in answered["messages"] if m["type"] == "verification.reply"]
    assert len(replies) == 1
    assert answered["findings"] == "已婚，一孩，与户籍信息一致。"
    assert answered["promised_by"] == "2026-06-20"
    mine = origin.api("GET", f"/api/v1/verification-requests/{case_id}").json()
    assert [m["type"] for m in mine["messages"] if m["direction"] == "sent"] == [
        "verification.ack",
        "verification.reply",
    ]


def test_reply_errors_are_shown_next_to_the_field(page: Page, host: LocalNode, origin: LocalNode) -> None:
    out = send_case(host, origin)
    case_id = arrived_case(origin, out["request_id"])
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/cases/{case_id}")
    token = csrf(page)
    url = f"{origin.url}/console/cases/{case_id}/reply"
    empty = page.request.post(url, form={"csrftoken": token, "outcome": "confirmed", "findings": "  "})
    assert empty.status == 422
    assert "请填写核实情况。" in empty.text()
    long = page.request.post(url, form={"csrftoken": token, "outcome": "confirmed", "findings": "字" * 2001})
    assert long.status == 422
    assert "核实情况最多 2000 字。" in long.text()
    no_outcome = page.request.post(url, form={"csrftoken": token, "outcome": "maybe", "findings": "情况"})
    assert no_outcome.status == 422
    assert "请选择核实结果。" in no_outcome.text()
    # In the browser: the message next to the field, the text kept.
    page.evaluate("document.getElementById('findings').removeAttribute('maxlength')")
    page.get_by_label("核实结果").select_option(label="查无此人")
    page.get_by_label("核实情况").fill("字" * 2001)
    page.get_by_role("button", name="发送反馈").click()
    expect(page.locator("#findings-error")).to_have_text("核实情况最多 2000 字。")
    expect(page.get_by_label("核实结果")).to_have_value("not_found")
    # Nothing was sent.
    assert case_at_host(host, out["request_id"])["status"] in ("queued", "delivered")  # type: ignore[index]


def test_unknown_case_is_a_404_page(page: Page, origin: LocalNode) -> None:
    sign_in(page, origin, Role.operator)
    response = page.goto(f"{origin.url}/console/cases/999999")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("页面不存在")
    page.goto(f"{origin.url}/console/")
    token = csrf(page)
    post = page.request.post(
        f"{origin.url}/console/cases/999999/reply",
        form={"csrftoken": token, "outcome": "confirmed", "findings": "情况"},
    )
    assert post.status == 404


def test_auditor_reads_the_case_but_may_not_answer_or_reveal(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    out = send_case(host, origin)
    case_id = arrived_case(origin, out["request_id"])
    sign_in(page, origin, Role.auditor)
    response = page.goto(f"{origin.url}/console/cases/{case_id}")
    assert response is not None
    assert response.status == 200
    expect(page.locator("#question")).to_contain_text("请核实该对象的婚姻状况及生育情况。")
    expect(page.locator("#reply-form")).to_have_count(0)
    expect(page.get_by_text("显示完整身份证号")).to_have_count(0)
    token = csrf(page)
    base = f"{origin.url}/console/cases/{case_id}"
    reply = page.request.post(
        f"{base}/reply", form={"csrftoken": token, "outcome": "confirmed", "findings": "审计不应能反馈"}
    )
    assert reply.status == 403
    assert "无权访问" in reply.text()
    for path, form in (("reveal", {"reason": "verification"}), ("ack", {}), ("assign", {})):
        refused = page.request.post(f"{base}/{path}", form={"csrftoken": token, **form})
        assert refused.status == 403, path
        assert out["sent_subject"]["id_number"] not in refused.text()
    assert case_at_host(host, out["request_id"])["status"] in ("queued", "delivered")  # type: ignore[index]


def test_operator_reveals_the_id_number_with_a_reason(page: Page, host: LocalNode, origin: LocalNode) -> None:
    out = send_case(host, origin)
    number = out["sent_subject"]["id_number"]
    case_id = arrived_case(origin, out["request_id"])
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/cases/{case_id}")
    page.get_by_text("显示完整身份证号", exact=True).first.click()  # the <summary>
    reason = page.get_by_label("查看完整身份证号的事由（必选，将记入审计日志）")
    page.evaluate("document.getElementById('reason').removeAttribute('required')")
    page.get_by_role("button", name="显示完整身份证号").click()  # no reason chosen
    expect(page.locator("#reason-error")).to_have_text("请选择查看完整身份证号的事由。")
    expect(page.locator("#full-id")).to_have_count(0)
    reason.select_option(label="协查核对")
    page.get_by_role("button", name="显示完整身份证号").click()
    expect(page.locator("#full-id")).to_have_text(number)
    assert number not in page.url
    assert page.url.endswith(f"/console/cases/{case_id}/reveal")
    page.goto(f"{origin.url}/console/cases/{case_id}")  # shown once, not kept
    expect(page.locator("#full-id")).to_have_count(0)


def test_print_view_shows_facts_and_history_without_forms(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    out = send_case(host, origin)
    case_id = arrived_case(origin, out["request_id"])
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/cases/{case_id}")
    expect(page.get_by_role("button", name="打印")).to_be_visible()
    page.emulate_media(media="print")
    expect(page.locator("#reply-form")).to_be_hidden()
    expect(page.locator("#ack-form")).to_be_hidden()
    expect(page.locator("header.top")).to_be_hidden()
    expect(page.get_by_role("button", name="打印")).to_be_hidden()
    expect(page.locator("#question")).to_be_visible()
    expect(page.locator("#deadline")).to_be_visible()
    expect(page.locator("#history")).to_be_visible()
    expect(page.locator("#subject")).to_be_visible()
    page.emulate_media(media="screen")
    # The print button calls window.print() (from the static script, no inline code).
    page.evaluate("() => { window.__printed = 0; window.print = () => { window.__printed += 1; }; }")
    page.get_by_role("button", name="打印").click()
    assert page.evaluate("window.__printed") == 1
