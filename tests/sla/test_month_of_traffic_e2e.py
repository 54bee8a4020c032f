"""A month of 协查 and 通报 between two real nodes, their clocks moved (YIPANQI_CLOCK_OFFSET_SECONDS),
and the October report of both sides checked against a table computed by hand.

Both nodes start at 2026-10-01 10:00 Asia/Shanghai. The host 金水区 asks the origin 太康县:

| request | priority | key target | due (24:00 Shanghai) | answered (node clock)        | on time |
|---------|----------|------------|----------------------|------------------------------|---------|
| R1      | urgent   | yes        | 16 Oct               | 1 Oct                        | yes     |
| R2      | normal   | no         | 31 Oct               | 20 Oct (acked 1 Oct)         | yes     |
| R3      | normal   | yes        | 31 Oct               | never (open at month end)    | no      |
| R4      | urgent   | no         | 16 Oct               | 16 Oct 20:00 (before 24:00)  | yes     |
| R5      | urgent   | no         | 16 Oct               | 20 Oct (late)                | no      |

and sends one birth notification (ack due 31 Oct), acknowledged by the origin on 20 Oct.

Hand-computed October rates (numerator / denominator), the same on both sides of the wire:
feedback 3/5, key-target feedback 1/2, urgent feedback 2/3; the origin's processing rate
(requests and notifications it owed) 4/6; send-receive 1/1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from service.localnet import LocalNode, wait_for
from tests.conftest import NetworkFactory, clock_offset

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
REQUESTS = {  # name: (priority, key_target)
    "R1": ("urgent", True),
    "R2": ("normal", False),
    "R3": ("normal", True),
    "R4": ("urgent", False),
    "R5": ("urgent", False),
}


def move_to(nodes: list[LocalNode], shanghai_time: str) -> None:
    """Restart the nodes with their clocks at ``shanghai_time`` (e.g. '2026-10-16T20:00')."""
    target = datetime.fromisoformat(shanghai_time + "+08:00")
    for node in nodes:
        node.stop()
        node.env_extra["YIPANQI_CLOCK_OFFSET_SECONDS"] = clock_offset(at=target)
        node.start()


def case(node: LocalNode, reference: str) -> dict[str, Any] | None:
    items = node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()["items"]
    return next((c for c in items if c["reference"] == reference), None)


def settled(node: LocalNode, reference: str, status: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: (c := case(node, reference)) and c["status"] == status and c)
    return found


def reply(origin: LocalNode, host: LocalNode, reference: str) -> None:
    incoming = wait_for(lambda: case(origin, reference))
    body = {"outcome": "confirmed", "findings": "已核实。"}
    response = origin.api("POST", f"/api/v1/verification-requests/{incoming['id']}/reply", json=body)
    assert response.status_code == 200, response.text
    settled(host, reference, "answered")  # the reply's receipt time is what the rates judge


def rates(node: LocalNode, direction: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    report = node.api("GET", "/api/v1/reports/2026-10")
    assert report.status_code == 200, report.text
    return {
        (row["metric"], row["dimension"], row["value"]): (row["numerator"], row["denominator"])
        for row in report.json()["rows"]
        if row["direction"] == direction
    }


@pytest.mark.slow
def test_october_rates_on_both_sides(network: NetworkFactory) -> None:
    host, origin = network(start=False)
    nodes = [host, origin]
    move_to(nodes, "2026-10-01T10:00")
    for name, (priority, key_target) in REQUESTS.items():
        body = {
            "recipient": origin.node_id,
            "subject": SUBJECT,
            "topic": "marital_status",
            "priority": priority,
            "key_target": key_target,
            "question": "请核实。",
            "reference": name,
        }
        assert host.api("POST", "/api/v1/verification-requests", json=body).status_code == 201
    details = {"birth_date": "2026-09-28", "birth_order": 1, "sex": "F", "birth_registered": True}
    notification = {
        "recipient": origin.node_id,
        "subject": SUBJECT,
        "kind": "birth",
        "occurred_on": "2026-09-28",
        "details": details,
    }
    sent = host.api("POST", "/api/v1/notifications", json=notification)
    assert sent.status_code == 201, sent.text
    for name in REQUESTS:
        delivered = settled(host, name, "delivered")
        days = 15 if REQUESTS[name][0] == "urgent" else 30
        expected_due = "2026-10-16T16:00:00Z" if days == 15 else "2026-10-31T16:00:00Z"
        assert delivered["due_at"].replace("+00:00", "Z") == expected_due
    reply(origin, host, "R1")
    ack = origin.api(
        "POST",
        f"/api/v1/verification-requests/{case(origin, 'R2')['id']}/ack",
        json={"promised_by": "2026-10-25"},
    )
    assert ack.status_code == 200, ack.text

    move_to(nodes, "2026-10-16T20:00")
    reply(origin, host, "R4")

    move_to(nodes, "2026-10-20T09:00")
    reply(origin, host, "R2")
    reply(origin, host, "R5")
    incoming = origin.api("GET", "/api/v1/notifications", params={"direction": "incoming"}).json()["items"]
    assert origin.api("POST", f"/api/v1/notifications/{incoming[0]['id']}/ack").status_code == 200
    wait_for(lambda: host.api("GET", "/api/v1/notifications").json()["items"][0]["status"] == "acknowledged")

    move_to(nodes, "2026-11-02T09:00")  # October is complete: its report can be made
    asked, answered = rates(host, "outgoing"), rates(origin, "incoming")
    for side in (asked, answered):
        assert side[("feedback_rate", "all", "")] == (3, 5)
        assert side[("key_target_feedback_rate", "all", "")] == (1, 2)
        assert side[("feedback_rate", "priority", "urgent")] == (2, 3)
        assert side[("send_receive_rate", "all", "")] == (1, 1)
    assert answered[("processing_rate", "all", "")] == (4, 6)
