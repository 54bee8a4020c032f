"""/metrics, /readyz's scheduler check and the notices API against real node processes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.localnet import LocalNode, wait_for
from service.sla.deadlines import SHANGHAI
from tests.conftest import NetworkFactory, clock_offset

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}


def scrape(node: LocalNode) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{node.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def messages(node: LocalNode, message_type: str, direction: str, outcome: str) -> float:
    return value(
        scrape(node), "yipanqi_peer_messages_total", type=message_type, direction=direction, outcome=outcome
    )


def find(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    items = node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()["items"]
    return next((c for c in items if c["request_id"] == request_id), None)


@pytest.mark.slow
def test_metrics_count_the_traffic_and_the_sweeps_make_notices(sqlite_network: NetworkFactory) -> None:
    jinshui, taikang = sqlite_network()
    body = {
        "recipient": taikang.node_id,
        "subject": SUBJECT,
        "topic": "marital_status",
        "question": "请核实该对象婚育情况。",
    }
    created = jinshui.api("POST", "/api/v1/verification-requests", json=body)
    assert created.status_code == 201, created.text
    request_id = created.json()["request_id"]
    incoming = wait_for(lambda: find(taikang, request_id))
    # An interim answer far past the deadline: recorded and shown, the deadline stays.
    ack = taikang.api(
        "POST", f"/api/v1/verification-requests/{incoming['id']}/ack", json={"promised_by": "2030-01-31"}
    )
    assert ack.status_code == 200, ack.text
    asked = wait_for(lambda: (c := find(jinshui, request_id)) and c["status"] == "acknowledged" and c)
    assert asked["due_at"] == incoming["due_at"]
    # A request that is not signed is rejected (and counted).
    unsigned = httpx.post(
        f"{taikang.url}/peer/v1/verification-requests",
        content=b"{}",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert unsigned.status_code == 401

    # The answering side: the request came in, its ack went out.
    wait_for(lambda: messages(taikang, "verification.ack", "outgoing", "delivered") == 1)
    on_taikang = scrape(taikang)
    assert (
        value(
            on_taikang,
            "yipanqi_peer_messages_total",
            type="verification.request",
            direction="incoming",
            outcome="accepted",
        )
        == 1
    )
    assert (
        value(
            on_taikang,
            "yipanqi_peer_messages_total",
            type="verification.request",
            direction="incoming",
            outcome="rejected",
        )
        == 1
    )
    assert value(on_taikang, "yipanqi_delivery_latency_seconds_count", type="verification.ack") == 1
    # The asking side: the mirror image.
    wait_for(lambda: messages(jinshui, "verification.request", "outgoing", "delivered") == 1)
    on_jinshui = scrape(jinshui)
    assert (
        value(
            on_jinshui,
            "yipanqi_peer_messages_total",
            type="verification.ack",
            direction="incoming",
            outcome="accepted",
        )
        == 1
    )
    assert value(on_jinshui, "yipanqi_delivery_latency_seconds_count", type="verification.request") == 1
    assert (
        value(on_jinshui, "yipanqi_delivery_latency_seconds_bucket", type="verification.request", le="+Inf")
        == 1
    )
    for metrics in (on_taikang, on_jinshui):
        assert value(metrics, "yipanqi_metrics_database_up") == 1
        assert value(metrics, "yipanqi_relay_queue_depth") == 0
        assert value(metrics, "yipanqi_relay_oldest_pending_age_seconds") == 0
        assert value(metrics, "yipanqi_relay_dead_messages") == 0
    assert value(on_taikang, "yipanqi_overdue_items", item_type="verification", direction="incoming") == 0
    # The current month's rates are there with numerator and denominator: the open case counts in
    # the month of its deadline (24:00 of a day in Shanghai), none is answered yet.
    month = next(dict(labels)["month"] for name, labels in on_taikang if name == "yipanqi_rate_denominator")
    due_month = (datetime.fromisoformat(incoming["due_at"]) - timedelta(microseconds=1)).astimezone(SHANGHAI)
    assert value(
        on_taikang, "yipanqi_rate_denominator", metric="feedback_rate", direction="incoming", month=month
    ) == (1 if due_month.strftime("%Y-%m") == month else 0)
    assert (
        value(on_taikang, "yipanqi_rate_numerator", metric="feedback_rate", direction="incoming", month=month)
        == 0
    )
    ready = httpx.get(f"{taikang.url}/readyz", timeout=10).json()
    assert ready["checks"]["scheduler"] == "ok"
    assert taikang.api("GET", "/api/v1/notices").json()["total"] == 0

    # Forty days later (the 30-day deadline has passed) the sweep at start-up finds the case overdue.
    taikang.stop()
    taikang.env_extra["YIPANQI_CLOCK_OFFSET_SECONDS"] = clock_offset(timedelta(days=40))
    taikang.start()
    operator = wait_for(lambda: (page := taikang.api("GET", "/api/v1/notices").json())["total"] and page)
    assert [(n["kind"], n["item_type"], n["item_id"], n["role"]) for n in operator["items"]] == [
        ("overdue", "verification", incoming["id"], "operator")
    ]
    everything = taikang.api("GET", "/api/v1/notices", admin=True).json()
    assert sorted(n["kind"] for n in everything["items"]) == ["escalation", "overdue"]
    escalation = next(n for n in everything["items"] if n["kind"] == "escalation")
    assert escalation["role"] == "supervisor"
    assert escalation["item_path"] == f"/api/v1/verification-requests/{incoming['id']}"
    assert taikang.api("GET", "/api/v1/notices", params={"role": "supervisor"}).status_code == 403
    read = taikang.api("POST", f"/api/v1/notices/{escalation['id']}/read", admin=True)
    assert read.status_code == 200
    assert read.json()["read_by"] == f"admin-{taikang.node_id}"
    assert taikang.api("POST", f"/api/v1/notices/{escalation['id']}/read").status_code == 404  # not theirs
    unread = taikang.api("GET", "/api/v1/notices", admin=True, params={"unread": "true"}).json()
    assert [n["kind"] for n in unread["items"]] == ["overdue"]

    detail = taikang.api("GET", f"/api/v1/verification-requests/{incoming['id']}").json()
    assert detail["overdue"] is True
    assert detail["overdue_at"] is not None
    assert detail["due_at"] == incoming["due_at"]
    assert detail["promised_by"] == "2030-01-31"
    later = scrape(taikang)
    assert value(later, "yipanqi_overdue_items", item_type="verification", direction="incoming") == 1
    assert value(later, "yipanqi_unread_notices", role="operator", kind="overdue") == 1
    assert value(later, "yipanqi_unread_notices", role="supervisor", kind="escalation") == 0
    # Counters are per process: the restarted node starts again from zero.
    assert (
        value(
            later,
            "yipanqi_peer_messages_total",
            type="verification.request",
            direction="incoming",
            outcome="accepted",
        )
        == 0
    )
    assert httpx.get(f"{taikang.url}/readyz", timeout=10).json()["checks"]["scheduler"] == "ok"
