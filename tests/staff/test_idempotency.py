"""``Idempotency-Key`` on the staff API's creating writes, against real node processes.

The same key and request answer the first answer (same status, same body) and write nothing; the
same key with another request is 422; concurrent requests with one key make one write; no key
behaves as before; a step after the commit that fails (the audit line) never turns a committed
write into a 5xx. The fault tests (a node killed, the database cut) are in
test_idempotency_faults.py.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from service import contracts
from service.clock import utcnow
from service.db import make_engine, read_session, transaction
from service.localnet import LocalNode, build_network
from service.migrations import upgrade
from service.models import IdempotencyKey, Role
from service.staff.idempotency import fingerprint, parse_key, sweep_keys
from service.staff.service import create_staff
from tests.conftest import FAST, free_ports

CASES = "/api/v1/verification-requests"
NOTIFICATIONS = "/api/v1/notifications"
PROBLEM = "application/problem+json"
SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}


def case_body(recipient: str, question: str = "请核实该对象婚育情况。") -> dict[str, Any]:
    return {
        "recipient": recipient,
        "subject": SUBJECT,
        "topic": "marital_status",
        "priority": "normal",
        "question": question,
    }


def post(
    node: LocalNode, path: str, body: dict[str, Any], key: str | None, token: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or node.token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{node.url}{path}", json=body, headers=headers, timeout=30.0)


def count(node: LocalNode, sql: str, **params: Any) -> int:
    engine = make_engine(node.database_url)
    try:
        with read_session(engine) as session:
            return int(session.execute(text(sql), params).scalar_one())
    finally:
        engine.dispose()


def outgoing_cases(node: LocalNode) -> int:
    """Outgoing 协查 cases stored (the tests of a module run one after another on one node)."""
    return count(node, "SELECT count(*) FROM verification_case WHERE direction = 'outgoing'")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNode, LocalNode]]:
    root = tmp_path_factory.mktemp("idempotency")
    # The relay is off: what is counted is what the staff API stored, not what was delivered.
    env = {**FAST, "YIPANQI_RELAY_ENABLED": "false"}
    jinshui, taikang = build_network(root, [("410105", "金水区"), ("411627", "太康县")], free_ports(2), env)
    try:
        jinshui.start()
        yield jinshui, taikang
    finally:
        jinshui.stop()


def test_the_same_key_and_request_answers_the_first_answer_and_writes_once(
    pair: tuple[LocalNode, LocalNode],
) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question, key = f"同一请求重试 {uuid.uuid4()}", str(uuid.uuid4())
    first = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    # The draft's sf-string form names the same key.
    quoted = post(jinshui, CASES, case_body(taikang.node_id, question), f'"{key}"')
    assert (quoted.status_code, quoted.content) == (201, first.content)
    assert outgoing_cases(jinshui) - before == 1
    outbox = "SELECT count(*) FROM outbox_message WHERE message_id = :m"
    assert count(jinshui, outbox, m=first.json()["request_id"]) == 1
    # The kept answer carries the person's name: it is stored encrypted, like the case itself.
    engine = make_engine(jinshui.database_url)
    try:
        with read_session(engine) as session:
            kept = "SELECT response_body FROM idempotency_key WHERE key = :k"
            raw = bytes(session.execute(text(kept), {"k": key}).scalar_one())
    finally:
        engine.dispose()
    assert "王秀英" in first.text
    assert "王秀英".encode() not in raw
    assert b"question" not in raw


def test_the_same_key_with_another_body_or_route_is_422_and_writes_nothing(
    pair: tuple[LocalNode, LocalNode],
) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question, key = f"换了内容 {uuid.uuid4()}", str(uuid.uuid4())
    notifications = count(jinshui, "SELECT count(*) FROM notification")
    assert post(jinshui, CASES, case_body(taikang.node_id, question), key).status_code == 201
    other = post(jinshui, CASES, case_body(taikang.node_id, question + "（改）"), key)
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM
    problem = other.json()
    assert problem["code"] == "idempotency_key_reused"
    assert problem["status"] == 422
    assert "王秀英" not in other.text
    assert SUBJECT["id_number"] not in other.text
    notification = {
        "recipient": taikang.node_id,
        "subject": SUBJECT,
        "kind": "contraception",
        "occurred_on": "2025-08-01",
        "details": {"method": "iud", "since": "2021-04-01"},
    }
    elsewhere = post(jinshui, NOTIFICATIONS, notification, key)
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (422, "idempotency_key_reused")
    assert outgoing_cases(jinshui) - before == 1  # the first request's, and no other
    assert count(jinshui, "SELECT count(*) FROM notification") == notifications


def test_without_a_key_each_request_writes(pair: tuple[LocalNode, LocalNode]) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question = f"没有键 {uuid.uuid4()}"
    for _ in range(2):
        assert post(jinshui, CASES, case_body(taikang.node_id, question), None).status_code == 201
    assert outgoing_cases(jinshui) - before == 2


def test_keys_belong_to_an_account(pair: tuple[LocalNode, LocalNode]) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    engine = make_engine(jinshui.database_url)
    try:
        with transaction(engine) as tx:
            token = create_staff(tx, username=f"operator2-{uuid.uuid4().hex[:6]}", role=Role.operator)[1]
    finally:
        engine.dispose()
    question, key = f"两个账号 {uuid.uuid4()}", str(uuid.uuid4())
    mine = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    theirs = post(jinshui, CASES, case_body(taikang.node_id, question), key, token=token)
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    assert outgoing_cases(jinshui) - before == 2


@pytest.mark.parametrize(
    "key", ["", "has space", "a,b", "a;b", "x" * 256, '"unterminated', '"bad\\escape"', '"tab\t"']
)
def test_a_malformed_key_is_a_clear_422(pair: tuple[LocalNode, LocalNode], key: str) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question = f"坏键 {uuid.uuid4()}"
    try:
        response = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        pytest.skip("the client itself refuses to send this header")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "validation_failed"
    assert outgoing_cases(jinshui) - before == 0


def test_concurrent_requests_with_one_key_write_once(pair: tuple[LocalNode, LocalNode]) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question, key = f"并发同键 {uuid.uuid4()}", str(uuid.uuid4())
    body = case_body(taikang.node_id, question)

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {jinshui.token}", "Idempotency-Key": key}
        async with httpx.AsyncClient(base_url=jinshui.url, timeout=60) as client:
            return list(
                await asyncio.gather(*(client.post(CASES, json=body, headers=headers) for _ in range(24)))
            )

    answers = asyncio.run(burst())
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == len(answers) - 1
    assert outgoing_cases(jinshui) - before == 1


def test_an_expired_key_is_a_new_key(pair: tuple[LocalNode, LocalNode]) -> None:
    jinshui, taikang = pair
    before = outgoing_cases(jinshui)
    question, key = f"过期的键 {uuid.uuid4()}", str(uuid.uuid4())
    first = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    assert first.status_code == 201
    engine = make_engine(jinshui.database_url)
    try:  # the key was made 25 hours ago (the sweep has not run yet)
        with transaction(engine) as tx:
            tx.execute(
                text("UPDATE idempotency_key SET created_at = :at WHERE key = :k"),
                {"at": (utcnow() - timedelta(hours=25)).replace(tzinfo=None), "k": key},
            )
    finally:
        engine.dispose()
    again = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert outgoing_cases(jinshui) - before == 2


# --- a failure after the commit ------------------------------------------------------------------

# Loaded at interpreter start by the node (PYTHONPATH): the audit line of every write that creates
# something raises, as a broken audit sink would.
BROKEN_AUDIT = textwrap.dedent(
    """
    import logging

    class _Broken(logging.Filter):
        def filter(self, record):
            creates = (".create", ".register", ".issue", ".discrepancy_request")
            if any(str(a).endswith(creates) for a in record.args or ()):
                raise RuntimeError("the audit sink is down")
            return True

    logging.getLogger("yipanqi.audit").addFilter(_Broken())
    """
)


@pytest.fixture(scope="module")
def broken_audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNode, LocalNode]]:
    root = tmp_path_factory.mktemp("broken-audit")
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BROKEN_AUDIT, encoding="utf-8")
    env = {**FAST, "YIPANQI_RELAY_ENABLED": "false", "PYTHONPATH": str(hook)}
    jinshui, taikang = build_network(root, [("410105", "金水区"), ("411627", "太康县")], free_ports(2), env)
    try:
        jinshui.start()
        yield jinshui, taikang
    finally:
        jinshui.stop()


@pytest.mark.parametrize("key", [None, "after-commit-key"])
def test_a_failing_audit_after_the_commit_still_answers_201(
    broken_audit: tuple[LocalNode, LocalNode], key: str | None
) -> None:
    jinshui, taikang = broken_audit
    before = outgoing_cases(jinshui)
    question = f"审计坏了 {key}"
    response = post(jinshui, CASES, case_body(taikang.node_id, question), key)
    assert response.status_code == 201, response.text
    assert response.json()["question"] == question
    assert outgoing_cases(jinshui) - before == 1
    # The hook is really in place: a read's audit line is not broken, a create's is.
    assert jinshui.log_path is not None
    assert "a step after the commit failed; the write stands" in jinshui.log_path.read_text(encoding="utf-8")


# --- the contract and the sweep ------------------------------------------------------------------


# Creating routes whose answer must not be kept, and why.
NOT_REPLAYED = {
    # Its answer carries the new account's bearer token, shown once and never stored; a retry is
    # refused as the user name is taken, and an admin can issue a new token.
    "/api/v1/staff",
}


def test_every_creating_staff_post_declares_the_header() -> None:
    """A staff POST answering 201 creates something: it takes an Idempotency-Key (or is listed above)."""
    document = contracts.openapi_document()
    creating = [
        path
        for path, item in document["paths"].items()
        if path.startswith("/api/")
        and "201" in item.get("post", {}).get("responses", {})
        and path not in NOT_REPLAYED
    ]
    assert len(creating) >= 6
    for path in creating:
        operation = document["paths"][path]["post"]
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert "Idempotency-Key" in headers, path
        assert {"409", "422"} <= set(operation["responses"]), path


def test_parse_key_and_fingerprint() -> None:
    assert parse_key("abc-123") == parse_key('"abc-123"') == "abc-123"
    assert parse_key('"a \\"b\\" c"') == 'a "b" c'
    assert fingerprint("POST", "/x", b"{}") != fingerprint("POST", "/y", b"{}")
    assert fingerprint("POST", "/x", b"{}") != fingerprint("POST", "/x", b"{ }")


def test_the_sweep_forgets_old_keys_only(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sweep.db'}")
    try:
        upgrade(engine)
        now = utcnow()
        with transaction(engine) as tx:
            staff, _ = create_staff(tx, username="op", role=Role.operator)
            assert staff.id is not None
            for key, age in (("old", 25), ("young", 23)):
                tx.add(
                    IdempotencyKey(
                        staff_id=staff.id,
                        key=key,
                        route="POST /x",
                        fingerprint="0" * 64,
                        response_status=201,
                        response_body=b"{}",
                        created_at=now - timedelta(hours=age),
                    )
                )
        with transaction(engine) as tx:
            assert sweep_keys(tx, now, 24) == 1
        with read_session(engine) as session:
            assert list(session.exec(select(IdempotencyKey.key)).all()) == ["young"]
    finally:
        engine.dispose()


def test_each_creating_route_replays_its_first_answer(pair: tuple[LocalNode, LocalNode]) -> None:
    """The register and the 通报 routes too (the 协查 route is tested above)."""
    from tests.people.factories import person

    jinshui, taikang = pair

    def twice(path: str, body: dict[str, Any]) -> dict[str, Any]:
        key = str(uuid.uuid4())
        first, again = post(jinshui, path, body, key), post(jinshui, path, body, key)
        assert first.status_code == 201, first.text
        assert (again.status_code, again.content) == (201, first.content)
        assert again.headers["idempotent-replayed"] == "true"
        return dict(first.json())

    people = count(jinshui, "SELECT count(*) FROM person")
    resident = twice(
        "/api/v1/people",
        person(
            region=jinshui.node_id,
            seq=7,
            marital_status="first_marriage",
            marriage_date="2019-05-01",
            contraception_method="iud",
            contraception_since="2021-03-01",
        ),
    )  # of this county
    assert count(jinshui, "SELECT count(*) FROM person") == people + 1
    assert resident["id"] > 0
    notifications = count(jinshui, "SELECT count(*) FROM notification")
    notification = {
        "recipient": taikang.node_id,
        "subject": SUBJECT,
        "kind": "contraception",
        "occurred_on": "2025-08-01",
        "details": {"method": "iud", "since": "2021-04-01"},
    }
    twice(NOTIFICATIONS, notification)
    assert count(jinshui, "SELECT count(*) FROM notification") == notifications + 1
