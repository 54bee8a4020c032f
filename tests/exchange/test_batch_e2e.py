"""Batches between real node processes (docs/protocol.md section 18), on SQLite and PostgreSQL.

The relay sends a peer that advertises batches its backlog in ``POST /peer/v1/batch`` requests, and
a peer that does not advertise them single requests; either way every message is stored once and
every stored receipt is the receiver's signed evidence for it. A receiver SIGKILLed in the middle
of a large batch stores all of it or none of it, and after its restart the sender's retries leave
every message stored exactly once.

The backlogs are written into the sender's database by the project's own code
(``create_outgoing``, as the staff API does), before the relay looks or while it runs.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session, select

from service.clock import utcnow
from service.db import make_engine
from service.localnet import LocalNode, wait_for
from service.models import (
    Direction,
    InboxMessage,
    Notification,
    NotificationStatus,
    OutboxMessage,
    OutboxStatus,
)
from service.notifications.schemas import NotificationCreate
from service.notifications.service import create_outgoing
from service.signing.http import content_digest, sign_request, verify_response
from service.signing.keys import public_key_from_text
from service.signing.node import load_signer
from service.sla.deadlines import SHANGHAI
from tests.conftest import NetworkFactory
from tests.exchange.test_delivery_e2e import (
    PATIENT,
    freeze,
    kill,
    no_kept_alive_connections,
    request_in_flight,
    thaw,
    thawed_at_exit,
)
from tests.signing.bound import stored_binding

pytestmark = pytest.mark.slow

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
AUTO_ACK = {"YIPANQI_NOTIFICATION_AUTO_ACK_KINDS": '["arrival"]'}


def queue_notifications(sender: LocalNode, recipient: str, n: int) -> list[str]:
    """``n`` arrival 通报 from ``sender`` to ``recipient``, queued in its outbox; their message ids."""
    day = utcnow().astimezone(SHANGHAI).date() - timedelta(days=1)
    data = NotificationCreate.model_validate(
        {
            "recipient": recipient,
            "subject": SUBJECT,
            "kind": "arrival",
            "occurred_on": day.isoformat(),
            "details": {"arrived_on": day.isoformat()},
        }
    )
    engine = make_engine(sender.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            signer = load_signer(session, sender.data_dir / "keys")
            ids = [create_outgoing(session, signer, data, None).message_id for _ in range(n)]
            session.commit()
    finally:
        engine.dispose()
    return ids


def outbox(node: LocalNode) -> dict[str, OutboxMessage]:
    engine = create_engine(node.database_url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            return {r.message_id: r for r in session.exec(select(OutboxMessage)).all()}
    finally:
        engine.dispose()


def inbox(node: LocalNode) -> list[InboxMessage]:
    engine = create_engine(node.database_url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            return list(session.exec(select(InboxMessage)).all())
    finally:
        engine.dispose()


def notifications(node: LocalNode, direction: Direction) -> list[Notification]:
    engine = create_engine(node.database_url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Notification).where(Notification.direction == direction)).all())
    finally:
        engine.dispose()


def delivered(sender: LocalNode, ids: list[str]) -> bool:
    rows = outbox(sender)
    return all(rows[m].status == OutboxStatus.delivered for m in ids)


def incoming(node: LocalNode) -> dict[tuple[str, str], float]:
    """``yipanqi_peer_messages_total`` of incoming messages, by (type, outcome)."""
    text = httpx.get(f"{node.url}/metrics", timeout=30).text
    counts = {}
    for m in re.finditer(
        r'^yipanqi_peer_messages_total\{direction="incoming",outcome="(\w+)",type="([\w.]+)"\} (\S+)$',
        text,
        re.M,
    ):
        counts[(m[2], m[1])] = float(m[3])
    return counts


def singles(sender: LocalNode, receiver: LocalNode) -> int:
    """Single 通报 requests ``sender`` made to ``receiver`` (from its log: httpx logs each request)."""
    log = (sender.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")
    return log.count(f"POST {receiver.url}/peer/v1/notifications ")


def assert_stored_once_with_signed_receipts(sender: LocalNode, receiver: LocalNode, sent: list[str]) -> None:
    rows = outbox(sender)
    stored = [m.message_id for m in inbox(receiver) if m.message_id in set(sent)]
    assert sorted(stored) == sorted(sent)  # none lost, none twice
    theirs = {n.message_id for n in notifications(receiver, Direction.incoming)}
    assert set(sent) <= theirs
    keyid, public_key = receiver.public_key.split("=", 1)
    key = public_key_from_text(public_key)
    for message_id in sent:
        row = rows[message_id]
        assert row.status == OutboxStatus.delivered
        assert row.receipt_body is not None
        assert row.receipt_signature_input is not None
        assert row.receipt_signature is not None
        assert row.receipt_status in (200, 202)
        receipt = json.loads(row.receipt_body)
        assert (receipt["message_id"], receipt["digest"]) == (message_id, row.digest)
        verify_response(
            status=row.receipt_status,
            headers=[
                ("Content-Type", "application/json"),
                ("Content-Digest", content_digest(row.receipt_body)),
                ("Signature-Input", row.receipt_signature_input),
                ("Signature", row.receipt_signature),
            ],
            body=row.receipt_body,
            resolve_key=lambda k: key if k == keyid else None,
            expected_node=receiver.node_id,
            now=row.delivered_at or utcnow(),
            request=stored_binding(sender.database_url, message_id),  # the batch that carried it
        )
    # The receipt hook ran for each: the sender's 通报 has the receiver's received_at and due_at.
    mine = {n.message_id: n for n in notifications(sender, Direction.outgoing)}
    by_receiver = {m.message_id: m for m in inbox(receiver)}
    for message_id in sent:
        assert mine[message_id].received_at == by_receiver[message_id].received_at
        assert mine[message_id].due_at == by_receiver[message_id].due_at
        assert mine[message_id].status in (NotificationStatus.delivered, NotificationStatus.acknowledged)


# --- a peer that takes batches, and one that does not ----------------------------------------------


def test_the_relay_batches_to_a_peer_that_advertises_it_and_not_to_one_that_does_not(
    network: NetworkFactory,
) -> None:
    jinshui, taikang, yangpu = network(
        [("410105", "金水区"), ("411627", "太康县"), ("310110", "杨浦区")], start=False, env=AUTO_ACK
    )
    yangpu.env_extra["YIPANQI_PEER_BATCH_ENABLED"] = "false"
    to_taikang = queue_notifications(jinshui, taikang.node_id, 300)
    to_yangpu = queue_notifications(jinshui, yangpu.node_id, 40)
    for node in (taikang, yangpu, jinshui):
        node.start()

    wait_for(lambda: delivered(jinshui, to_taikang + to_yangpu), timeout=180)
    assert_stored_once_with_signed_receipts(jinshui, taikang, to_taikang)
    assert_stored_once_with_signed_receipts(jinshui, yangpu, to_yangpu)

    taken = incoming(taikang)
    assert taken[("batch", "answered")] >= 1
    assert taken[("notification", "accepted")] == 300
    # The relay reads what a peer advertises in the background, so only the first few go alone.
    assert singles(jinshui, taikang) <= 8
    assert singles(jinshui, yangpu) == 40
    info = httpx.get(f"{yangpu.url}/peer/v1/node", timeout=30).json()
    assert info["capabilities"] == []
    assert info["batch"] is None
    refused = incoming(yangpu)
    assert ("batch", "answered") not in refused
    assert refused[("notification", "accepted")] == 40

    # Both peers acknowledged every 通报 by themselves (auto-ack): the acks came back to 金水区,
    # which takes batches, and each was taken as its own endpoint would take it.
    # (Checked on acknowledged_at, not on status: on PostgreSQL the receipt hook can overwrite an
    # ack's status that committed while it ran, a race in the 通报 domain, reported separately.)
    def acknowledged() -> bool:
        mine = notifications(jinshui, Direction.outgoing)
        return len(mine) == 340 and all(n.acknowledged_at and n.ack_received_at for n in mine)

    wait_for(acknowledged, timeout=180)
    acks = incoming(jinshui)
    assert acks[("notification.ack", "accepted")] == 340
    assert acks.get(("batch", "answered"), 0) >= 1

    # A node that does not advertise batches does not take them either.
    body = b'{"items":["{}"]}'
    keys = jinshui.data_dir / "keys"
    engine = make_engine(jinshui.database_url)
    try:
        with Session(engine) as session:
            signer = load_signer(session, keys)
    finally:
        engine.dispose()
    headers = sign_request(
        method="POST",
        path="/peer/v1/batch",
        body=body,
        key=signer.private_key,
        keyid=signer.keyid,
        created=utcnow(),
    )
    response = httpx.post(f"{yangpu.url}/peer/v1/batch", content=body, headers=headers, timeout=30)
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


# --- a receiver killed in the middle of a large batch --------------------------------------------------


def settled(node: LocalNode) -> None:
    """After a SIGKILL: wait until the database has finished what the node left (PostgreSQL goes on
    with a COMMIT already sent, or rolls back once it sees the connection gone)."""
    if not node.database_url.startswith("postgresql"):
        return  # SQLite: the commit is in the file or not, the moment the process is gone
    engine = create_engine(node.database_url, poolclass=NullPool)
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def others() -> int:  # a connection each time: the statistics views are fixed within a transaction
        with engine.connect() as conn:
            return int(conn.execute(text(query)).scalar_one())

    try:
        wait_for(lambda: others() == 0, timeout=30, interval=0.1)
    finally:
        engine.dispose()


def cpu_seconds(node: LocalNode) -> float:
    assert node.process is not None
    fields = Path(f"/proc/{node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def test_a_receiver_killed_in_the_middle_of_a_large_batch_loses_and_duplicates_nothing(
    network: NetworkFactory,
) -> None:
    # Long leases: the backlog is written while the relay runs, holding the sender's database for
    # a while, and no lease may run out meanwhile (that would send part of the batch a second time).
    # All 1,000 in one batch (the relay sends 500 at most by default).
    env = PATIENT | {"YIPANQI_RELAY_LEASE_SECONDS": "60", "YIPANQI_RELAY_BATCH_MAX_ITEMS": "1000"}
    jinshui, taikang = network(env=env, start=False)
    first = queue_notifications(
        jinshui, taikang.node_id, 4
    )  # due together: the relay reads taikang's capabilities
    taikang.start()
    jinshui.start()
    with thawed_at_exit(jinshui, taikang):
        wait_for(lambda: delivered(jinshui, first), timeout=60)
        no_kept_alive_connections(taikang)

        # 1,000 more while taikang is frozen: the relay sends them in one batch, which waits in its socket.
        freeze(taikang)
        rest = queue_notifications(jinshui, taikang.node_id, 1000)
        size = request_in_flight(taikang)
        assert size > 64 * 1024  # a batch, not a single 通报 (well under a kilobyte)
        # Let it read and work on the batch for a moment, then kill it before it can answer.
        used = cpu_seconds(taikang)
        thaw(taikang)
        wait_for(lambda: cpu_seconds(taikang) >= used + 0.3, timeout=30, interval=0.01)
        kill(taikang)
        settled(taikang)
        # All of the batch or none of it: it is stored in one transaction.
        stored = {m.message_id for m in inbox(taikang)} & set(rest)
        assert stored in (set(), set(rest))

        # The sender gets no answer (unless it was quicker than the kill) and tries again later.
        def recorded() -> bool:
            rows = outbox(jinshui)
            return all(rows[m].status == OutboxStatus.delivered or rows[m].last_error for m in rest)

        wait_for(recorded, timeout=60)
        before = outbox(jinshui)
        answered = {m for m in rest if before[m].status == OutboxStatus.delivered}
        assert answered <= stored
        taikang.start()
        wait_for(lambda: delivered(jinshui, first + rest), timeout=180)

    assert_stored_once_with_signed_receipts(jinshui, taikang, first + rest)
    rows = outbox(jinshui)
    for message_id in set(rest) - answered:
        # Sent again after the restart: a duplicate if the batch was stored before the kill.
        assert rows[message_id].receipt_status == (200 if stored else 202)
        assert rows[message_id].attempts >= 2
    assert not [
        line for line in (taikang.data_dir / "node.log").read_text().splitlines() if "Traceback" in line
    ]
