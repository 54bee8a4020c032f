"""Delivery never loses or duplicates a message: real node processes, peers down, nodes SIGKILLed.

The crashes are placed, not hoped for. A node is frozen with SIGSTOP while a request is in
flight to it (its bytes are waiting in the receiving socket, checked in /proc/net/tcp), so the
test decides exactly which side dies at which step of "claim, send, record".
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session, select

from service.localnet import LocalNode, wait_for
from service.models import InboxMessage, OutboxMessage, OutboxStatus, VerificationCase
from service.signing.http import content_digest, verify_response
from service.signing.keys import public_key_from_text
from tests.conftest import NetworkFactory
from tests.signing.bound import stored_binding

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
CASES = "/api/v1/verification-requests"
OUTBOX = "/api/v1/outbox"
# Long enough that a request held by a frozen peer never times out while the test acts.
PATIENT = {"YIPANQI_PEER_TIMEOUT_SECONDS": "120", "YIPANQI_RELAY_DELIVERY_DEADLINE_SECONDS": "120"}

pytestmark = pytest.mark.slow


# --- talking to the nodes ----------------------------------------------------------------------


def send(asker: LocalNode, answerer: LocalNode, n: int = 1) -> list[str]:
    """Create ``n`` 协查 requests through the staff API; their request ids (= message ids)."""
    ids = []
    for i in range(n):
        body = {
            "recipient": answerer.node_id,
            "subject": SUBJECT,
            "topic": "marital_status",
            "question": f"请核实该对象婚育情况（第{i + 1}件）。",
        }
        response = asker.api("POST", CASES, json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["request_id"])
    return ids


def outbox(node: LocalNode, status: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"page_size": 200} | ({"status": status} if status else {})
    response = node.api("GET", OUTBOX, admin=True, params=params)
    assert response.status_code == 200, response.text
    # One page holds them all. (Not compared with "total": on PostgreSQL the count and the page
    # are two statements, and a delivery may land in between.)
    return response.json()["items"]  # type: ignore[no-any-return]


def delivered(node: LocalNode) -> set[str]:
    return {m["message_id"] for m in outbox(node, "delivered")}


def cases(node: LocalNode, **params: str) -> list[dict[str, Any]]:
    response = node.api("GET", CASES, params={"page_size": 200, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


# --- looking into their databases --------------------------------------------------------------


@contextmanager
def database(node: LocalNode) -> Iterator[Session]:
    """A short read of the node's own database (its SQLite file or its PostgreSQL database)."""
    engine = create_engine(node.database_url, poolclass=NullPool)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()


def inbox_rows(node: LocalNode) -> list[InboxMessage]:
    with database(node) as session:
        return list(session.exec(select(InboxMessage)).all())


def outbox_rows(node: LocalNode) -> dict[str, OutboxMessage]:
    with database(node) as session:
        return {r.message_id: r for r in session.exec(select(OutboxMessage)).all()}


def case_rows(node: LocalNode) -> list[VerificationCase]:
    with database(node) as session:
        return list(session.exec(select(VerificationCase)).all())


def assert_signed_receipt(
    row: OutboxMessage, receiver: LocalNode, status: int, kind: str, sender: LocalNode
) -> None:
    """The stored receipt is the receiver's signed evidence for this very message and body."""
    assert row.status == OutboxStatus.delivered
    assert row.receipt_status == status
    assert row.receipt_body is not None
    assert row.receipt_signature_input is not None
    assert row.receipt_signature is not None
    assert row.delivered_at is not None
    receipt = json.loads(row.receipt_body)
    assert (receipt["message_id"], receipt["digest"], receipt["status"]) == (row.message_id, row.digest, kind)
    keyid, public_key = receiver.public_key.split("=", 1)
    verify_response(
        status=status,
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Digest", content_digest(row.receipt_body)),
            ("Signature-Input", row.receipt_signature_input),
            ("Signature", row.receipt_signature),
        ],
        body=row.receipt_body,
        resolve_key=lambda k: public_key_from_text(public_key) if k == keyid else None,
        expected_node=receiver.node_id,
        now=row.delivered_at,
        request=stored_binding(sender.database_url, row.message_id),  # the attempt it answers (evidence log)
    )


def assert_exactly_once(sender: LocalNode, receiver: LocalNode, sent: list[str]) -> None:
    """Every message sent is delivered, stored once by the receiver, and is one case there."""
    assert len(set(sent)) == len(sent)
    rows = outbox_rows(sender)
    assert set(rows) == set(sent)
    assert all(r.status == OutboxStatus.delivered for r in rows.values())
    inbox = [m.message_id for m in inbox_rows(receiver)]
    assert sorted(inbox) == sorted(sent)  # one row per message: none lost, none twice
    incoming = [c.request_message_id for c in case_rows(receiver)]
    assert sorted(incoming) == sorted(sent)
    listed = cases(receiver, direction="incoming")
    assert sorted(c["request_id"] for c in listed) == sorted(sent)
    assert {c["status"] for c in listed} == {"received"}
    outgoing = cases(sender, direction="outgoing")
    assert sorted(c["request_id"] for c in outgoing) == sorted(sent)
    assert {c["status"] for c in outgoing} == {"delivered"}
    # Both sides hold the same clock start: the receipt's received_at.
    theirs = {c["request_id"]: c["received_at"] for c in listed}
    assert all(c["received_at"] == theirs[c["request_id"]] for c in outgoing)


# --- freezing and killing processes ------------------------------------------------------------


def freeze(node: LocalNode) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)


def thaw(node: LocalNode) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGCONT)


def kill(node: LocalNode) -> None:
    node.stop(signal.SIGKILL)


@contextmanager
def thawed_at_exit(*nodes: LocalNode) -> Iterator[None]:
    """Never leave a frozen node behind for the fixture to stop (SIGTERM waits on a stopped process)."""
    try:
        yield
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)


def _server_side(port: int) -> list[int]:
    """Unread byte counts of the established connections a server on 127.0.0.1:``port`` holds."""
    counts = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.split(":")[1], 16) == port and state == "01":  # ESTABLISHED
            counts.append(int(queues.split(":")[1], 16))
    return counts


def waiting_bytes(port: int) -> int:
    """Bytes received on 127.0.0.1:``port`` that the server process has not read yet."""
    return sum(_server_side(port))


def no_kept_alive_connections(receiver: LocalNode) -> None:
    """Wait until the receiver has closed its idle keep-alive connections (after 5 s, uvicorn's default).

    A request sent on such a connection to a frozen node is lost once the node is thawed more than
    5 s after its last answer: the keep-alive timer fires before the waiting bytes are read. On a new
    connection there is no such timer, so the next request is sure to be read after a thaw.
    """
    wait_for(lambda: not _server_side(receiver.port), timeout=30)


def request_in_flight(receiver: LocalNode) -> int:
    """Wait until a whole request sits unread at the frozen ``receiver``; its size in bytes.

    The sender writes headers and body separately, then blocks reading the answer: once the
    count is non-zero and stops changing, the request is complete.
    """
    seen: list[int] = []

    def stable() -> int:
        now = waiting_bytes(receiver.port)
        seen.append(now)
        return now if now and seen[-3:] == [now] * 3 else 0

    return int(wait_for(stable, timeout=30, interval=0.25))


# --- a: the peer is down when the request is sent --------------------------------------------


def test_peer_down_at_send_time_gets_the_message_once_it_is_back(network: NetworkFactory) -> None:
    jinshui, taikang = network(start=False)
    jinshui.start()
    (request_id,) = send(jinshui, taikang)

    # The relay keeps trying against the closed port...
    retried = wait_for(lambda: [m for m in outbox(jinshui) if m["attempts"] >= 2])
    assert [m["message_id"] for m in retried] == [request_id]
    assert retried[0]["status"] == "pending"
    assert retried[0]["last_error"]
    assert retried[0]["delivered_at"] is None

    # ...and delivers once the peer is up.
    taikang.start()
    wait_for(lambda: delivered(jinshui) == {request_id})
    row = outbox_rows(jinshui)[request_id]
    assert row.attempts > 1
    assert row.last_error is None
    assert_signed_receipt(row, taikang, 202, "accepted", jinshui)
    assert_exactly_once(jinshui, taikang, [request_id])
    (incoming,) = inbox_rows(taikang)
    assert incoming.digest == row.digest
    assert incoming.received_at == row.receipt_received_at


# --- b: a node is SIGKILLed in the middle of a delivery run -----------------------------------


def test_sender_killed_between_send_and_record_loses_and_duplicates_nothing(
    network: NetworkFactory,
) -> None:
    jinshui, taikang = network(env=PATIENT)
    with thawed_at_exit(jinshui, taikang):
        first = send(jinshui, taikang, 10)
        wait_for(lambda: delivered(jinshui) == set(first))
        no_kept_alive_connections(taikang)

        # Freeze the receiver and queue 20 more: the relay claims what is due and blocks on what
        # it sent, which waits unread in the receiver's socket.
        freeze(taikang)
        rest = send(jinshui, taikang, 20)
        request_in_flight(taikang)
        # Freeze the sender too, so it cannot read the answer; let the receiver store what it got
        # and answer into the void; then kill the sender: sent and stored, never recorded.
        freeze(jinshui)
        thaw(taikang)
        stored = wait_for(lambda: {m.message_id for m in inbox_rows(taikang)} - set(first))
        kill(jinshui)

        before = outbox_rows(jinshui)
        assert {m for m, r in before.items() if r.status == OutboxStatus.delivered} == set(first)
        for message_id in stored:
            assert before[message_id].status == OutboxStatus.pending
            assert before[message_id].lease_owner is not None  # claimed and sent; never recorded
            assert before[message_id].attempts == 1

        # After the restart the expired leases let the relay send them again; the receiver knows them.
        jinshui.start()
        wait_for(lambda: len(delivered(jinshui)) == 30, timeout=60)

    sent = first + rest
    assert_exactly_once(jinshui, taikang, sent)
    rows = outbox_rows(jinshui)
    # The receiver answers a resend with "duplicate". Those are the messages it stored while the
    # sender was frozen or dead: at least the ones seen above (with several relay threads, one
    # more may have been stored after that look), each sent once before the crash.
    duplicates = {m for m in rest if rows[m].receipt_status == 200}
    assert stored <= duplicates
    for message_id in duplicates:
        assert before[message_id].lease_owner is not None
        assert rows[message_id].attempts == 2
        assert_signed_receipt(rows[message_id], taikang, 200, "duplicate", jinshui)
    for message_id in set(sent) - duplicates:
        assert_signed_receipt(rows[message_id], taikang, 202, "accepted", jinshui)


def test_receiver_killed_mid_run_loses_and_duplicates_nothing(network: NetworkFactory) -> None:
    jinshui, taikang = network(env=PATIENT)
    with thawed_at_exit(jinshui, taikang):
        first = send(jinshui, taikang, 10)
        wait_for(lambda: delivered(jinshui) == set(first))

        # The receiver dies with a request unread in its socket and the rest waiting at the sender.
        freeze(taikang)
        rest = send(jinshui, taikang, 20)
        request_in_flight(taikang)
        kill(taikang)

        # The sender notices: every one of them fails while the receiver is down. The peer's
        # circuit is open by then, so the relay goes on probing it with one message at a time
        # rather than retrying all twenty.
        wait_for(
            lambda: (
                all(m["attempts"] >= 1 and m["last_error"] for m in outbox(jinshui, "pending"))
                and len(outbox(jinshui, "pending")) == 20
            ),
            timeout=60,
        )
        tried = sum(m["attempts"] for m in outbox(jinshui, "pending"))
        wait_for(lambda: sum(m["attempts"] for m in outbox(jinshui, "pending")) >= tried + 2, timeout=30)
        assert delivered(jinshui) == set(first)
        assert sorted(m.message_id for m in inbox_rows(taikang)) == sorted(first)

        taikang.start()
        wait_for(lambda: len(delivered(jinshui)) == 30, timeout=60)

    sent = first + rest
    assert_exactly_once(jinshui, taikang, sent)
    rows = outbox_rows(jinshui)
    for message_id in rest:
        assert rows[message_id].attempts >= 2  # failed while the receiver was down, then delivered
        assert_signed_receipt(rows[message_id], taikang, 202, "accepted", jinshui)


# --- c: the retry budget, dead messages, and an administrator's re-run ------------------------


def test_dead_message_is_rerun_by_an_admin_and_delivered_once(sqlite_network: NetworkFactory) -> None:
    jinshui, taikang = sqlite_network(start=False, env={"YIPANQI_RELAY_MAX_ATTEMPTS": "2"})
    jinshui.start()
    one, two = send(jinshui, taikang, 2)
    dead = wait_for(lambda: len(outbox(jinshui, "dead")) == 2 and outbox(jinshui, "dead"))
    assert {m["message_id"] for m in dead} == {one, two}
    assert all(m["attempts"] == 2 for m in dead)
    assert all("ConnectError" in m["last_error"] for m in dead)

    # Only administrators see the outbox and re-run messages.
    for method, path in (
        ("GET", OUTBOX),
        ("POST", f"{OUTBOX}/dead/requeue"),
        ("POST", f"{OUTBOX}/{one}/requeue"),
    ):
        forbidden = jinshui.api(method, path)  # an operator's token
        assert forbidden.status_code == 403, forbidden.text
        assert forbidden.json()["code"] == "forbidden"
    anonymous = httpx.post(f"{jinshui.url}{OUTBOX}/dead/requeue", timeout=30.0)
    assert anonymous.status_code == 401
    assert len(outbox(jinshui, "dead")) == 2  # nothing was requeued by the refused calls

    taikang.start()
    # One message re-run by id: delivered once. The other stays dead (no automatic retries).
    requeued = jinshui.api("POST", f"{OUTBOX}/{one}/requeue", admin=True)
    assert requeued.status_code == 200, requeued.text
    assert requeued.json() == {"requeued": 1}
    wait_for(lambda: delivered(jinshui) == {one})
    assert [m["message_id"] for m in outbox(jinshui, "dead")] == [two]
    again = jinshui.api("POST", f"{OUTBOX}/{one}/requeue", admin=True)
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"
    unknown = jinshui.api("POST", f"{OUTBOX}/0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10/requeue", admin=True)
    assert unknown.status_code == 404

    # The rest re-run in one go.
    everything = jinshui.api("POST", f"{OUTBOX}/dead/requeue", admin=True)
    assert everything.json() == {"requeued": 1}
    wait_for(lambda: delivered(jinshui) == {one, two})
    assert outbox(jinshui, "dead") == []
    assert jinshui.api("POST", f"{OUTBOX}/dead/requeue", admin=True).json() == {"requeued": 0}

    assert_exactly_once(jinshui, taikang, [one, two])
    rows = outbox_rows(jinshui)
    for message_id in (one, two):
        assert rows[message_id].attempts == 1  # a fresh budget, used once
        assert_signed_receipt(rows[message_id], taikang, 202, "accepted", jinshui)
