"""已发 in a real Chromium: delivery, the peer's 签收 and 反馈, re-running a dead message, 催办."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Page, expect
from sqlalchemy import update
from sqlmodel import Session, col

from service.clock import utcnow
from service.console.outgoing import Cursor, Filters, outgoing_page
from service.db import make_engine, transaction
from service.directory.service import KeySpec, add_peer
from service.localnet import LocalNode, wait_for
from service.models import OutboxMessage, OutboxStatus, Role, VerificationCase
from service.signing.keys import public_key_text
from tests.conftest import free_ports
from tests.console.conftest import sign_in

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
CASES = "/api/v1/verification-requests"


def send(asker: LocalNode, recipient: str, **extra: Any) -> dict[str, Any]:
    body = {
        "recipient": recipient,
        "subject": SUBJECT,
        "topic": "marital_status",
        "question": "请核实该对象婚育情况。",
        **extra,
    }
    response = asker.api("POST", CASES, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def case_at(node: LocalNode, request_id: str, direction: str) -> dict[str, Any] | None:
    params = {"direction": direction, "page_size": 200}
    items = node.api("GET", CASES, params=params).json()["items"]
    return next((c for c in items if c["request_id"] == request_id), None)


def status_is(node: LocalNode, case_id: int, status: str) -> bool:
    return bool(node.api("GET", f"{CASES}/{case_id}").json()["status"] == status)


def csrf(page: Page) -> str:
    token = page.locator("input[name=csrftoken]").first.get_attribute("value")
    assert token
    return token


def write(node: LocalNode, statement: Any) -> int:
    """A direct change in the node's database (what the relay or the clock would have done)."""
    engine = make_engine(node.database_url)
    try:
        with transaction(engine) as tx:
            return int(tx.exec(statement).rowcount)
    finally:
        engine.dispose()


def test_a_sent_request_shows_delivery_then_the_peers_ack_and_reply(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    sent = send(host, origin.node_id, priority="urgent")
    sign_in(page, host, Role.auditor)  # a reader sees the list too
    page.get_by_role("navigation", name="主菜单").get_by_role("link", name="已发").click()
    expect(page).to_have_url(f"{host.url}/console/outgoing")
    page.get_by_label("对方县").select_option(origin.node_id)
    page.get_by_label("类型").select_option("case")
    page.get_by_role("button", name="筛选").click()
    expect(page).to_have_url(f"{host.url}/console/outgoing?peer={origin.node_id}&type=case&delivery=")
    row = page.locator(f"#case-{sent['id']}")
    expect(row).to_contain_text("协查")
    expect(row).to_contain_text("紧急")
    expect(row).to_contain_text("婚育情况")
    expect(row).to_contain_text("太康县")
    expect(row).not_to_contain_text(SUBJECT["id_number"])  # masked
    expect(row.locator("td.delivery")).to_have_text(re.compile(r"排队中|已送达"))
    expect(row.get_by_role("link", name="婚育情况")).to_have_attribute("href", f"/console/cases/{sent['id']}")
    expect(row.get_by_role("button")).to_have_count(0)  # an auditor acts on nothing

    wait_for(lambda: status_is(host, sent["id"], "delivered"))
    page.reload()
    expect(row.locator("td.delivery")).to_have_text("已送达")
    expect(row.locator("td.ack")).to_have_text("未签收")
    expect(row.locator("td.due")).not_to_contain_text("待送达后确定")  # the receipt's deadline

    incoming = wait_for(lambda: case_at(origin, sent["request_id"], "incoming"))
    ack = origin.api("POST", f"{CASES}/{incoming['id']}/ack", json={})
    assert ack.status_code == 200, ack.text
    wait_for(lambda: status_is(host, sent["id"], "acknowledged"))
    page.reload()
    expect(row.locator("td.ack")).to_have_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d"))
    expect(row.locator("td.reply")).to_have_text("未反馈")

    reply = origin.api(
        "POST",
        f"{CASES}/{incoming['id']}/reply",
        json={"outcome": "confirmed", "findings": "已婚，一孩，信息一致。"},
    )
    assert reply.status_code == 200, reply.text
    wait_for(lambda: status_is(host, sent["id"], "answered"))
    page.reload()
    expect(row.locator("td.reply")).to_contain_text("属实")

    # Filters: a delivery state that does not match hides it; the delivered filter keeps it.
    page.goto(f"{host.url}/console/outgoing?peer={origin.node_id}&type=notification")
    expect(page.locator(f"#case-{sent['id']}")).to_have_count(0)
    page.goto(f"{host.url}/console/outgoing?peer={origin.node_id}&delivery=delivered")
    expect(page.locator(f"#case-{sent['id']}")).to_be_visible()


def test_pages_go_on_with_an_opaque_cursor(page: Page, host: LocalNode, origin: LocalNode) -> None:
    sent = [send(host, origin.node_id) for _ in range(3)]
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/outgoing?type=case&peer={origin.node_id}")
    ids = page.locator("table.outgoing tbody tr").evaluate_all("rows => rows.map(r => r.id)")
    assert ids[:3] == [f"case-{s['id']}" for s in reversed(sent)]  # newest first
    # The same list two at a time: each page goes on after the last row of the one before.

    engine = make_engine(host.database_url)
    try:
        with Session(engine) as session:
            mine = Filters(peer=origin.node_id, type="case")
            first, after = outgoing_page(session, mine, None, utcnow(), 2)
            second, _ = outgoing_page(session, mine, after, utcnow(), 2)
    finally:
        engine.dispose()
    assert [i.id for i in first] == [sent[2]["id"], sent[1]["id"]]
    assert second[0].id == sent[0]["id"]
    assert after is not None
    assert Cursor.decode(after.encode()) == after
    page.goto(f"{host.url}/console/outgoing?after=not-a-cursor")
    expect(page.get_by_role("alert")).to_have_text("翻页位置无效，已回到第一页。")


def _unreachable_peer(host: LocalNode) -> str:
    """A county in 金水区's directory whose node does not answer (nothing listens on its port)."""
    node_id = f"4199{secrets.randbelow(90) + 10}"
    key = public_key_text(Ed25519PrivateKey.generate().public_key())
    engine = make_engine(host.database_url)
    try:
        with transaction(engine) as tx:
            add_peer(
                tx,
                node_id=node_id,
                name="测试县",
                url=f"http://127.0.0.1:{free_ports(1)}",
                keys=[KeySpec.parse(f"{node_id}/k1={key}")],
            )
    finally:
        engine.dispose()
    return node_id


def test_a_dead_message_is_rerun_by_an_admin_and_not_by_an_operator(page: Page, host: LocalNode) -> None:
    peer = _unreachable_peer(host)
    sent = send(host, peer)
    message_id = sent["request_id"]
    engine = make_engine(host.database_url)

    def tried() -> bool:
        with Session(engine) as session:
            row = session.get(OutboxMessage, message_id)
            return row is not None and row.last_error is not None

    try:
        wait_for(tried)
    finally:
        engine.dispose()
    # The relay gives up after its retry budget; here it is given up at once.
    gave_up = (
        update(OutboxMessage)
        .where(col(OutboxMessage.message_id) == message_id, col(OutboxMessage.status) == OutboxStatus.pending)
        .values(status=OutboxStatus.dead, lease_owner=None, lease_until=None)
    )
    assert write(host, gave_up) == 1

    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/outgoing?delivery=dead&peer={peer}")
    row = page.locator(f"#case-{sent['id']}")
    expect(row.locator("td.delivery")).to_contain_text("投递失败")
    expect(row.locator(".last-error")).to_contain_text("最后错误")
    expect(row.get_by_role("button", name="重新投递")).to_have_count(0)
    refused = page.request.post(
        f"{host.url}/console/outgoing/messages/{message_id}/requeue", form={"csrftoken": csrf(page)}
    )
    assert refused.status == 403
    assert "无权访问" in refused.text()
    page.reload()
    expect(row.locator("td.delivery")).to_contain_text("投递失败")  # still dead

    page.context.clear_cookies()
    sign_in(page, host, Role.admin)
    page.goto(f"{host.url}/console/outgoing?delivery=dead&peer={peer}")
    row.get_by_role("button", name="重新投递").click()
    expect(page.get_by_role("status")).to_contain_text("已重新投递")
    expect(page).to_have_url(f"{host.url}/console/outgoing?peer={peer}&delivery=dead&done=requeued")
    expect(page.locator(f"#case-{sent['id']}")).to_have_count(0)  # no longer dead
    page.goto(f"{host.url}/console/outgoing?peer={peer}")
    expect(row.locator("td.delivery")).to_contain_text("排队中")
    again = page.request.post(
        f"{host.url}/console/outgoing/messages/{message_id}/requeue", form={"csrftoken": csrf(page)}
    )
    assert again.status == 409  # only a dead message is re-run


def test_an_overdue_request_is_chased_and_the_chase_is_shown(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    late, on_time = send(host, origin.node_id), send(host, origin.node_id)
    wait_for(lambda: status_is(host, late["id"], "delivered") and status_is(host, on_time["id"], "delivered"))
    past = (
        update(VerificationCase)
        .where(col(VerificationCase.id) == late["id"])
        .values(due_at=utcnow() - timedelta(days=2))
    )
    assert write(host, past) == 1

    sign_in(page, host, Role.auditor)
    page.goto(f"{host.url}/console/outgoing?overdue=1&peer={origin.node_id}")
    row = page.locator(f"#case-{late['id']}")
    expect(row.locator("td.due")).to_contain_text("已超期")
    expect(row.get_by_role("button", name="催办")).to_have_count(0)
    refused = page.request.post(
        f"{host.url}/console/outgoing/cases/{late['id']}/chase", form={"csrftoken": csrf(page)}
    )
    assert refused.status == 403

    page.context.clear_cookies()
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/outgoing?overdue=1&peer={origin.node_id}")
    expect(page.locator(f"#case-{on_time['id']}")).to_have_count(0)  # not overdue: not listed
    row.get_by_role("button", name="催办").click()
    expect(page.get_by_role("status")).to_contain_text("已记录催办")
    username = host.logins[Role.operator][0]
    expect(row.locator(".chased")).to_contain_text("已催办")
    expect(row.locator(".chased")).to_contain_text(f"（{username}）")
    expect(row.get_by_role("button", name="再次催办")).to_be_visible()
    # A request that is not overdue cannot be chased.
    early = page.request.post(
        f"{host.url}/console/outgoing/cases/{on_time['id']}/chase", form={"csrftoken": csrf(page)}
    )
    assert early.status == 409
    assert "操作冲突" in early.text()
