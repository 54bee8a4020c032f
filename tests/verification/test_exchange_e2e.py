"""Three real node processes exchange 协查 requests, acks and replies both ways."""

from __future__ import annotations

from typing import Any

import pytest

from service.localnet import LocalNode, wait_for
from tests.conftest import NetworkFactory

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
NODES = [("310110", "杨浦区"), ("410105", "金水区"), ("411627", "太康县")]


def send(asker: LocalNode, answerer: LocalNode, **extra: Any) -> dict[str, Any]:
    body = {
        "recipient": answerer.node_id,
        "subject": SUBJECT,
        "topic": "marital_status",
        "question": "请核实该对象婚育情况。",
        **extra,
    }
    response = asker.api("POST", "/api/v1/verification-requests", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def find(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    items = node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()["items"]
    return next((c for c in items if c["request_id"] == request_id), None)


def status_is(node: LocalNode, request_id: str, status: str) -> dict[str, Any] | None:
    case = find(node, request_id)
    return case if case and case["status"] == status else None


@pytest.mark.slow
def test_requests_acks_and_replies_cross_both_ways(network: NetworkFactory) -> None:
    yangpu, jinshui, taikang = network(NODES)
    out1 = send(jinshui, taikang, priority="urgent", key_target=True, reference="JS-2026-000123")
    out2 = send(yangpu, taikang)
    out3 = send(taikang, jinshui, topic="record_accuracy")  # the other way round
    for asker, answerer, out in ((jinshui, taikang, out1), (yangpu, taikang, out2), (taikang, jinshui, out3)):
        assert out["status"] == "queued"
        delivered = wait_for(lambda a=asker, o=out: status_is(a, o["request_id"], "delivered"))
        incoming = wait_for(lambda n=answerer, o=out: find(n, o["request_id"]))
        # Both sides hold the same clock: the receipt's received_at and due_at.
        assert incoming["status"] == "received"
        assert incoming["direction"] == "incoming"
        assert incoming["due_at"] == delivered["due_at"]
        assert incoming["received_at"] == delivered["received_at"]
        ack = answerer.api(
            "POST", f"/api/v1/verification-requests/{incoming['id']}/ack", json={"promised_by": "2026-12-01"}
        )
        assert ack.status_code == 200, ack.text
        wait_for(lambda a=asker, o=out: status_is(a, o["request_id"], "acknowledged"))
        reply = answerer.api(
            "POST",
            f"/api/v1/verification-requests/{incoming['id']}/reply",
            json={"outcome": "confirmed", "findings": "已婚，一孩，信息一致。"},
        )
        assert reply.status_code == 200, reply.text
        answered = wait_for(lambda a=asker, o=out: status_is(a, o["request_id"], "answered"))
        detail = asker.api("GET", f"/api/v1/verification-requests/{answered['id']}").json()
        assert detail["outcome"] == "confirmed"
        assert detail["findings"] == "已婚，一孩，信息一致。"
        assert detail["promised_by"] == "2026-12-01"
        types = [(m["type"], m["direction"]) for m in detail["messages"]]
        assert types == [
            ("verification.request", "sent"),
            ("verification.ack", "received"),
            ("verification.reply", "received"),
        ]
        assert detail["messages"][0]["receipt"]["status"] == "accepted"
    # The urgent request runs on the 15-day clock, the normal ones on 30 days.
    urgent = find(jinshui, out1["request_id"])
    normal = find(yangpu, out2["request_id"])
    assert urgent is not None
    assert normal is not None
    assert urgent["due_at"] < normal["due_at"]


@pytest.mark.slow
def test_answered_case_is_closed(sqlite_network: NetworkFactory) -> None:
    jinshui, taikang = sqlite_network()
    out = send(jinshui, taikang)
    incoming = wait_for(lambda: find(taikang, out["request_id"]))
    path = f"/api/v1/verification-requests/{incoming['id']}"
    first = taikang.api("POST", f"{path}/reply", json={"outcome": "not_found", "findings": "查无此人。"})
    assert first.status_code == 200
    again = taikang.api("POST", f"{path}/reply", json={"outcome": "confirmed", "findings": "改为一致。"})
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"
    assert taikang.api("POST", f"{path}/ack", json={}).json()["code"] == "invalid_state"
    detail = taikang.api("GET", path).json()
    assert detail["outcome"] == "not_found"
