"""Staff API authentication and roles, against real node processes: bearer tokens, 401 and 403 problems."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.localnet import LocalNode, build_network, wait_for
from tests.conftest import FAST, free_ports

TOKEN = re.compile(r"^yp_([0-9]+)_([A-Za-z0-9_-]{20,100})$")
PRINTED_TOKEN = re.compile(r"^yp_[0-9]+_\S+$", re.M)
SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
CASES = "/api/v1/verification-requests"
PROBLEM = "application/problem+json"


@dataclass
class Pair:
    """Two started nodes; ``tokens[node_id][role]`` is a bearer token of that role on that node."""

    jinshui: LocalNode
    taikang: LocalNode
    tokens: dict[str, dict[str, str]]

    def call(self, node: LocalNode, role: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[node.node_id][role]}"}
        return httpx.request(method, f"{node.url}{path}", headers=headers, timeout=30.0, **kwargs)


def add_staff(node: LocalNode, username: str, role: str) -> str:
    out = node.cli("staff", "add", "--username", username, "--role", role)
    match = PRINTED_TOKEN.search(out)
    assert match is not None, out
    return match.group(0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # One network for the module: starting nodes is the slow part, and the tests only add cases.
    root = tmp_path_factory.mktemp("staff")
    jinshui, taikang = build_network(root, [("410105", "金水区"), ("411627", "太康县")], free_ports(2), FAST)
    try:
        for node in (jinshui, taikang):
            node.start()
        tokens = {
            node.node_id: {
                "operator": node.token,
                "admin": node.admin_token,
                "auditor": add_staff(node, f"auditor-{node.node_id}", "auditor"),
                "supervisor": add_staff(node, f"supervisor-{node.node_id}", "supervisor"),
            }
            for node in (jinshui, taikang)
        }
        yield Pair(jinshui, taikang, tokens)
    finally:
        for node in (jinshui, taikang):
            node.stop()


def new_request(pair: Pair, role: str = "operator") -> httpx.Response:
    body = {"recipient": "411627", "subject": SUBJECT, "topic": "marital_status", "question": "请核实。"}
    return pair.call(pair.jinshui, role, "POST", CASES, json=body)


def incoming(pair: Pair, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        items = pair.call(pair.taikang, "operator", "GET", CASES, params={"page_size": 200}).json()["items"]
        return next((c for c in items if c["request_id"] == request_id), None)

    found: dict[str, Any] = wait_for(find)
    return found


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://yipanqi.org/problems/{code}"


# --- tokens -------------------------------------------------------------------------------------------


def test_tokens_have_the_documented_form_and_are_stored_only_as_argon2_hashes(pair: Pair) -> None:
    tokens = pair.tokens["410105"]
    parts = {role: TOKEN.fullmatch(token) for role, token in tokens.items()}
    assert all(parts.values()), tokens
    assert len(set(tokens.values())) == len(tokens)
    database = pair.jinshui.data_dir / "yipanqi.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = dict(conn.execute("SELECT id, token_hash FROM staff").fetchall())
    conn.close()
    for role, match in parts.items():
        assert match is not None
        stored = rows[int(match.group(1))]
        assert stored.startswith("$argon2id$"), role
        assert match.group(2) not in stored
    for path in pair.jinshui.data_dir.rglob("yipanqi.db*"):
        content = path.read_bytes()
        assert not any(m.group(2).encode() in content for m in parts.values() if m), path


def test_a_token_works_on_its_own_node_only(pair: Pair) -> None:
    own = pair.call(pair.jinshui, "operator", "GET", CASES)
    assert own.status_code == 200, own.text
    # The other node's operator token has the same form (and maybe the same account id): still refused.
    foreign = httpx.get(
        f"{pair.jinshui.url}{CASES}", headers={"Authorization": f"Bearer {pair.tokens['411627']['operator']}"}
    )
    assert_problem(foreign, 401, "not_authenticated")


def _wrong_secret(pair: Pair) -> str:
    match = TOKEN.fullmatch(pair.tokens["410105"]["operator"])
    assert match is not None
    secret = match.group(2)
    return f"yp_{match.group(1)}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer nope",
        "Bearer yp_1_short",
        "Bearer yp_99999_" + "x" * 43,  # well formed, no such account
        "wrong-secret",
        "Basic dXNlcjpwYXNz",
        "token-without-scheme",
    ],
)
def test_missing_malformed_or_wrong_tokens_get_a_401_problem(pair: Pair, authorization: str | None) -> None:
    if authorization == "wrong-secret":
        authorization = f"Bearer {_wrong_secret(pair)}"
    elif authorization == "token-without-scheme":
        authorization = pair.tokens["410105"]["operator"]
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", CASES), ("POST", CASES), ("GET", "/api/v1/outbox")):
        response = httpx.request(method, f"{pair.jinshui.url}{path}", headers=headers, json={})
        assert_problem(response, 401, "not_authenticated")
        assert "yp_" not in response.text  # the token is never echoed back


# --- roles ----------------------------------------------------------------------------------------------


def test_operator_and_supervisor_can_create_requests(pair: Pair) -> None:
    for role in ("operator", "supervisor"):
        response = new_request(pair, role)
        assert response.status_code == 201, response.text
        assert response.json()["created_by"] == f"{role}-410105"


def test_auditor_reads_but_cannot_create(pair: Pair) -> None:
    created = new_request(pair)
    assert created.status_code == 201, created.text
    listed = pair.call(pair.jinshui, "auditor", "GET", CASES, params={"page_size": 200})
    assert listed.status_code == 200, listed.text
    assert created.json()["request_id"] in {c["request_id"] for c in listed.json()["items"]}
    detail = pair.call(pair.jinshui, "auditor", "GET", f"{CASES}/{created.json()['id']}")
    assert detail.status_code == 200, detail.text
    assert detail.json()["subject_id_number_masked"] == "4116**********0024"
    assert SUBJECT["id_number"] not in detail.text
    before = listed.json()["total"]
    refused = new_request(pair, "auditor")
    assert_problem(refused, 403, "forbidden")
    assert "auditor" in refused.json()["detail"]
    after = pair.call(pair.jinshui, "auditor", "GET", CASES).json()["total"]
    assert after == before  # nothing was queued


def test_auditor_cannot_acknowledge_or_reply(pair: Pair) -> None:
    created = new_request(pair)
    assert created.status_code == 201, created.text
    case = incoming(pair, created.json()["request_id"])
    path = f"{CASES}/{case['id']}"
    assert_problem(pair.call(pair.taikang, "auditor", "POST", f"{path}/ack", json={}), 403, "forbidden")
    reply = {"outcome": "confirmed", "findings": "信息一致。"}
    assert_problem(pair.call(pair.taikang, "auditor", "POST", f"{path}/reply", json=reply), 403, "forbidden")
    assert pair.call(pair.taikang, "auditor", "GET", path).json()["status"] == "received"
    # The refusal was the role's, not the case's state: an operator may do both.
    assert pair.call(pair.taikang, "operator", "POST", f"{path}/ack", json={}).status_code == 200
    assert pair.call(pair.taikang, "operator", "POST", f"{path}/reply", json=reply).status_code == 200


@pytest.mark.parametrize("role", ["operator", "supervisor", "auditor"])
def test_outbox_endpoints_are_admin_only(pair: Pair, role: str) -> None:
    node = pair.jinshui
    assert_problem(pair.call(node, role, "GET", "/api/v1/outbox"), 403, "forbidden")
    assert_problem(pair.call(node, role, "POST", "/api/v1/outbox/dead/requeue"), 403, "forbidden")
    some_id = "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10"
    assert_problem(pair.call(node, role, "POST", f"/api/v1/outbox/{some_id}/requeue"), 403, "forbidden")


def test_admin_sees_the_outbox_and_can_requeue(pair: Pair) -> None:
    created = new_request(pair)
    assert created.status_code == 201, created.text
    listed = pair.call(pair.jinshui, "admin", "GET", "/api/v1/outbox", params={"page_size": 200})
    assert listed.status_code == 200, listed.text
    rows = {row["message_id"]: row for row in listed.json()["items"]}
    assert rows[created.json()["request_id"]]["type"] == "verification.request"
    requeued = pair.call(pair.jinshui, "admin", "POST", "/api/v1/outbox/dead/requeue")
    assert requeued.status_code == 200, requeued.text
    assert requeued.json() == {"requeued": 0}  # nothing is dead between two healthy nodes


# --- accounts -----------------------------------------------------------------------------------------


def test_staff_add_refuses_a_taken_or_malformed_username(pair: Pair) -> None:
    with pytest.raises(RuntimeError, match="taken"):
        pair.jinshui.cli("staff", "add", "--username", "auditor-410105", "--role", "auditor")
    with pytest.raises(RuntimeError, match="username"):
        pair.jinshui.cli("staff", "add", "--username", "王 秀英", "--role", "auditor")
    with pytest.raises(RuntimeError):
        pair.jinshui.cli("staff", "add", "--username", "someone", "--role", "superuser")
