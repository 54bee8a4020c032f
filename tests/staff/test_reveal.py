"""查看完整身份证号 through the staff API, against real node processes (issue 10 item 2).

Every read (a person, a 协查 case, a 通报, create answers included) carries the ID number masked; the
full number comes only from ``POST …/reveal`` with a reason from the fixed list, to an operator or a
supervisor, and each reveal writes one audit line naming the record and the reason — never the number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service import idnumbers
from service.localnet import LocalNode
from service.staff.reveal import REVEAL_REASONS
from tests.conftest import NetworkFactory
from tests.notifications.test_details import SUBJECT, VALID
from tests.people.factories import person

PROBLEM = "application/problem+json"
BAD_BODIES: list[dict[str, Any]] = [
    {},  # no reason
    {"reason": ""},
    {"reason": "curious"},  # not on the list
    {"reason": "核实本人身份"},  # the label, not the code
    {"reason": "identity", "note": "王秀英 asked"},  # free text is refused (extra="forbid")
]


@dataclass
class Item:
    path: str  # the read; the reveal is path + "/reveal"
    number: str
    action: str
    target: str


def audit_lines(node: LocalNode, action: str) -> list[str]:
    log = node.log_path.read_text(encoding="utf-8", errors="replace") if node.log_path else ""
    return [line for line in log.splitlines() if f" action={action} " in line]


def call(node: LocalNode, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(method, f"{node.url}{path}", headers=headers, timeout=30.0, **kwargs)


def auditor(node: LocalNode) -> str:
    out = node.cli("staff", "add", "--username", "auditor-reveal", "--role", "auditor")
    return next(word for word in out.split() if word.startswith("yp_"))


def created(response: httpx.Response, number: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    assert number not in response.text  # a create answer is masked too
    body: dict[str, Any] = response.json()
    return body


def items(host: LocalNode, origin: LocalNode) -> list[Item]:
    body = person(seq=7)
    one = created(host.api("POST", "/api/v1/people", json=body), body["id_number"])
    assert one["id_number_masked"] == idnumbers.mask(body["id_number"])
    request = {"recipient": origin.node_id, "subject": SUBJECT, "topic": "marital_status", "question": "核实"}
    case = created(host.api("POST", "/api/v1/verification-requests", json=request), SUBJECT["id_number"])
    notice = {
        "recipient": origin.node_id,
        "subject": SUBJECT,
        "kind": "birth",
        "occurred_on": "2025-08-01",
        "details": VALID["birth"],
    }
    sent = created(host.api("POST", "/api/v1/notifications", json=notice), SUBJECT["id_number"])
    return [
        Item(f"/api/v1/people/{one['id']}", body["id_number"], "people.reveal_id", f"person:{one['id']}"),
        Item(
            f"/api/v1/verification-requests/{case['id']}",
            SUBJECT["id_number"],
            "verification.reveal_id",
            f"case:{case['id']}",
        ),
        Item(
            f"/api/v1/notifications/{sent['id']}",
            SUBJECT["id_number"],
            "notification.reveal_id",
            f"notification:{sent['id']}",
        ),
    ]


@pytest.mark.slow
def test_reads_mask_the_number_and_a_reveal_needs_a_reason_and_is_audited(network: NetworkFactory) -> None:
    host, origin = network()
    reader = auditor(host)
    for item in items(host, origin):
        # A read never carries the full number, for an operator or an auditor.
        for token in (host.token, reader):
            read = call(host, token, "GET", item.path)
            assert read.status_code == 200, read.text
            assert item.number not in read.text, item.path
            body = read.json()
            masked = body.get("id_number_masked") or body["subject_id_number_masked"]
            assert masked == idnumbers.mask(item.number)
            for message in body.get("messages", []):
                subject = message["payload"].get("subject")
                if subject is not None:
                    assert subject["id_number_masked"] == masked
                    assert "id_number" not in subject

        # Without a reason, or with one not on the list: 422 problem+json, no number, no audit.
        reveal = f"{item.path}/reveal"
        no_body = host.api("POST", reveal)
        assert (no_body.status_code, no_body.json()["code"]) == (422, "validation_failed")
        for bad in BAD_BODIES:
            refused = host.api("POST", reveal, json=bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.headers["content-type"] == PROBLEM
            assert refused.json()["code"] == "validation_failed"
            assert item.number not in refused.text
        # An auditor reads but may not reveal, whatever the reason.
        forbidden = call(host, reader, "POST", reveal, json={"reason": "identity"})
        assert (forbidden.status_code, forbidden.json()["code"]) == (403, "forbidden")
        assert item.number not in forbidden.text
        assert audit_lines(host, item.action) == []

        # With a reason: the full number, not to be cached, and one audit line without the number.
        shown = host.api("POST", reveal, json={"reason": "verification"})
        assert shown.status_code == 200, shown.text
        assert shown.json() == {"id_number": item.number, "reason": "verification"}
        assert shown.headers["cache-control"] == "no-store"
        lines = audit_lines(host, item.action)
        assert len(lines) == 1, lines
        assert f"staff=operator-{host.node_id} " in lines[0]
        assert lines[0].endswith(f"action={item.action} target={item.target} reason:verification")

    # Nothing to reveal: 404 (and no audit line); and no log line ever carries a number.
    missing = host.api("POST", "/api/v1/people/999999/reveal", json={"reason": "identity"})
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert len(audit_lines(host, "people.reveal_id")) == 1
    log = host.log_path.read_text(encoding="utf-8") if host.log_path else ""
    assert SUBJECT["id_number"] not in log
    assert person(seq=7)["id_number"] not in log


def test_the_reasons_are_one_list_for_the_api_and_the_console() -> None:
    from service.console import templating
    from service.staff.reveal import RevealReason, RevealRequest

    assert set(REVEAL_REASONS) == {r.value for r in RevealReason}
    assert templating._env.globals["REVEAL_REASONS"] is REVEAL_REASONS
    schema = RevealRequest.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["reason"]
