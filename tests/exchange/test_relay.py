"""The relay's client side, against respx: what counts as delivered, what is retried, what is dead.

No node processes: a Relay over a throwaway SQLite file (and, for the claim race, PostgreSQL when
YIPANQI_TEST_DATABASE_URL is set), the peer played by respx with responses signed by its key.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from service.clock import clock, utcnow
from service.config import Settings
from service.db import make_engine
from service.directory.service import remove_peer
from service.exchange.client import Circuits, PeerClient
from service.exchange.envelope import canonical_json, receipt_body
from service.exchange.outbox import enqueue
from service.exchange.relay import Attempt, Relay, backoff_delay
from service.models import OutboxMessage, OutboxStatus, Peer, PeerKey
from service.signing.http import (
    RequestBinding,
    content_digest,
    sign_response,
    verify_request,
    verify_response,
)
from service.signing.keys import public_key_text
from service.signing.node import NodeSigner
from tests.conftest import PostgresServer

ME, PEER, OTHER = "410105", "411627", "310110"
PEER_KEYID = f"{PEER}/k1"
PEER_URL, OTHER_URL = "http://taikang.test", "http://yangpu.test"
PATH = "/verification-requests"
URL, OTHER_ENDPOINT = f"{PEER_URL}/peer/v1{PATH}", f"{OTHER_URL}/peer/v1{PATH}"
REQUEST = "verification.request"
BASE, CAP, LEASE, MAX_ATTEMPTS = 2.0, 60.0, 60, 3
T0 = datetime(2026, 11, 22, 1, 30, tzinfo=UTC)


class Ping(BaseModel):
    text: str


@dataclass
class World:
    """One node's database, its signer and its relay; the peer's keys."""

    tmp: Path
    engine: Engine
    signer: NodeSigner
    peer_key: Ed25519PrivateKey
    other_key: Ed25519PrivateKey
    hook: Mock = field(default_factory=Mock)

    def settings(self, **changes: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": self.tmp,
            "relay_max_attempts": MAX_ATTEMPTS,
            "relay_backoff_base_seconds": BASE,
            "relay_backoff_cap_seconds": CAP,
            "relay_lease_seconds": LEASE,
            "relay_batch_size": 20,
        }
        return Settings(**(values | changes))

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def relay(self, engine: Engine | None = None, **changes: Any) -> Relay:
        bind = engine or self.engine
        settings = self.settings(**({"peer_timeout_seconds": 5.0} | changes))
        return Relay(
            settings,
            lambda: Session(bind, expire_on_commit=False),
            self.signer,
            {REQUEST: self.hook},
            client=PeerClient(timeout=settings.peer_timeout_seconds),
        )

    def enqueue(self, n: int = 1, recipient: str = PEER) -> list[str]:
        with self.session() as session:
            rows = [
                enqueue(
                    session,
                    type=REQUEST,
                    sender=ME,
                    recipient=recipient,
                    path=PATH,
                    payload=Ping(text=f"#{i}"),
                )
                for i in range(n)
            ]
            session.commit()
            return [r.message_id for r in rows]

    def row(self, message_id: str) -> OutboxMessage:
        with self.session() as session:
            row = session.get(OutboxMessage, message_id)
            assert row is not None
            return row


def add_peer(session: Session, node_id: str, key: Ed25519PrivateKey, url: str) -> None:
    session.add(Peer(node_id=node_id, name=node_id, url=url))
    session.flush()
    session.add(PeerKey(keyid=f"{node_id}/k1", node_id=node_id, public_key=public_key_text(key.public_key())))


def new_world(tmp: Path, engine: Engine) -> World:
    SQLModel.metadata.create_all(engine)
    world = World(
        tmp=tmp,
        engine=engine,
        signer=NodeSigner(ME, "金水区", f"{ME}/k1", Ed25519PrivateKey.generate()),
        peer_key=Ed25519PrivateKey.generate(),
        other_key=Ed25519PrivateKey.generate(),
    )
    with world.session() as session:
        add_peer(session, PEER, world.peer_key, PEER_URL)
        add_peer(session, OTHER, world.other_key, OTHER_URL)
        session.commit()
    return world


def run_once(relay: Relay) -> int:
    """One round of the relay (claim what is due, deliver, record): how many it attempted."""
    return asyncio.run(relay.sweep())


def backoff_of(row: OutboxMessage) -> float:
    """The retry delay the relay chose: the clock is frozen (``frozen``), so this is no measured time."""
    return (row.next_attempt_at - utcnow()).total_seconds()


@pytest.fixture
def frozen() -> Iterator[None]:
    clock.freeze(T0)
    yield
    clock.reset()


@pytest.fixture
def world(tmp_path: Path, frozen: None) -> Iterator[World]:  # noqa: ARG001
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    yield new_world(tmp_path, engine)
    engine.dispose()


@pytest.fixture
def peer() -> Iterator[respx.Router]:
    with respx.mock(assert_all_called=False) as router:
        yield router


# --- what the peer answers -----------------------------------------------------------------------


def bound(request: httpx.Request) -> RequestBinding | None:
    """What an answer to ``request`` is bound to (docs/protocol.md section 6.1)."""
    return RequestBinding.of_request(request.url.raw_path.decode("ascii"), request.headers.multi_items())


def signed(
    status: int,
    body: bytes,
    key: Ed25519PrivateKey,
    keyid: str = PEER_KEYID,
    content_type: str = "application/json",
    *,
    request: httpx.Request,
) -> httpx.Response:
    """The peer's signed answer to ``request`` (bound to it, as every peer answer is)."""
    headers = sign_response(
        status=status,
        body=body,
        key=key,
        keyid=keyid,
        created=utcnow(),
        content_type=content_type,
        request=bound(request),
    )
    return httpx.Response(status, content=body, headers=headers)


def receipt(request: httpx.Request, **changes: Any) -> bytes:
    envelope = json.loads(request.content)
    values: dict[str, Any] = {
        "message_id": envelope["message_id"],
        "status": "accepted",
        "received_at": utcnow(),
        "digest": content_digest(request.content),
        "due_at": utcnow() + timedelta(days=15),
    }
    return receipt_body(**(values | changes))


def problem(status: int, code: str) -> bytes:
    return canonical_json(
        {"type": "about:blank", "title": code, "status": status, "detail": "", "code": code}
    )


Answer = Callable[[World, httpx.Request], httpx.Response]


def accepted(world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, receipt(request), world.peer_key, request=request)


def rejected(status: int, code: str) -> Answer:
    def answer(world: World, request: httpx.Request) -> httpx.Response:
        body = problem(status, code)
        return signed(status, body, world.peer_key, content_type="application/problem+json", request=request)

    return answer


def answering(world: World, answer: Answer) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: answer(world, request)


# --- delivered ---------------------------------------------------------------------------------


def test_signed_receipt_is_delivered_and_kept(world: World, peer: respx.Router) -> None:
    route = peer.post(URL).mock(side_effect=answering(world, accepted))
    (message_id,) = world.enqueue()
    relay = world.relay()

    assert run_once(relay) == 1

    # What went out is a correctly signed peer request carrying the stored body.
    sent = route.calls.last.request
    row = world.row(message_id)
    assert sent.content == row.body
    verify_request(
        method="POST",
        path=f"/peer/v1{PATH}",
        headers=sent.headers.multi_items(),
        body=sent.content,
        resolve_key=lambda keyid: world.signer.private_key.public_key() if keyid == f"{ME}/k1" else None,
        now=utcnow(),
    )
    assert row.status == OutboxStatus.delivered
    assert row.attempts == 1
    assert row.delivered_at == utcnow()
    assert (row.lease_owner, row.lease_until, row.last_error) == (None, None, None)
    assert row.receipt_status == 202
    assert row.receipt_body is not None
    stored = json.loads(row.receipt_body)
    assert stored["message_id"] == message_id
    assert stored["digest"] == row.digest
    assert row.receipt_received_at == utcnow()
    assert row.receipt_due_at == utcnow() + timedelta(days=15)
    # The stored receipt is evidence: it verifies on its own, long after the HTTP exchange.
    assert row.receipt_signature_input is not None
    assert row.receipt_signature is not None
    verify_response(
        status=202,
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Digest", content_digest(row.receipt_body)),
            ("Signature-Input", row.receipt_signature_input),
            ("Signature", row.receipt_signature),
        ],
        body=row.receipt_body,
        resolve_key=lambda keyid: world.peer_key.public_key() if keyid == PEER_KEYID else None,
        expected_node=PEER,
        now=utcnow(),
        request=bound(sent),  # with the request it answers (its signature is in the evidence log)
    )
    # The domain hook ran once, with the stored row and the parsed receipt.
    world.hook.assert_called_once()
    _session, hooked_row, hooked_receipt = world.hook.call_args.args
    assert hooked_row.message_id == message_id
    assert hooked_row.status == OutboxStatus.delivered
    assert str(hooked_receipt.message_id) == message_id

    # Delivered is final: later sweeps send nothing and call nothing.
    clock.advance(timedelta(hours=2))
    assert run_once(relay) == 0
    assert route.call_count == 1
    world.hook.assert_called_once()


def test_duplicate_receipt_also_delivers(world: World, peer: respx.Router) -> None:
    """A 200 "duplicate" (the peer had it from an attempt whose receipt we lost) is a delivery too."""
    peer.post(URL).mock(
        side_effect=lambda r: signed(200, receipt(r, status="duplicate"), world.peer_key, request=r)
    )
    (message_id,) = world.enqueue()
    run_once(world.relay())
    row = world.row(message_id)
    assert row.status == OutboxStatus.delivered
    assert row.receipt_status == 200
    world.hook.assert_called_once()


# --- retried -----------------------------------------------------------------------------------


def unsigned(_world: World, request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, content=receipt(request), headers={"Content-Type": "application/json"})


def for_another_message(world: World, request: httpx.Request) -> httpx.Response:
    return signed(
        202,
        receipt(request, message_id="0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10"),
        world.peer_key,
        request=request,
    )


def for_another_body(world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, receipt(request, digest=content_digest(b"{}")), world.peer_key, request=request)


def not_a_receipt(world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, b'{"ok":true}', world.peer_key, request=request)


def signed_by_unknown_key(_world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, receipt(request), Ed25519PrivateKey.generate(), keyid=f"{PEER}/k9", request=request)


def signed_by_wrong_key(_world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, receipt(request), Ed25519PrivateKey.generate(), request=request)


def signed_by_another_node(world: World, request: httpx.Request) -> httpx.Response:
    return signed(202, receipt(request), world.other_key, keyid=f"{OTHER}/k1", request=request)


def body_changed_after_signing(world: World, request: httpx.Request) -> httpx.Response:
    good = signed(202, receipt(request), world.peer_key, request=request)
    forged = receipt(request, due_at=utcnow() + timedelta(days=365))
    return httpx.Response(202, content=forged, headers=good.headers)


def signature_too_old(world: World, request: httpx.Request) -> httpx.Response:
    body = receipt(request)
    headers = sign_response(
        status=202,
        body=body,
        key=world.peer_key,
        keyid=PEER_KEYID,
        created=utcnow() - timedelta(hours=1),
        content_type="application/json",
        request=bound(request),
    )
    return httpx.Response(202, content=body, headers=headers)


def refused(_world: World, request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def timed_out(_world: World, request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(unsigned, "HTTP 202, response not accepted: Signature-Input", id="unsigned-202"),
        pytest.param(signed_by_unknown_key, "HTTP 202, response not accepted", id="unknown-key"),
        pytest.param(signed_by_wrong_key, "does not verify", id="wrong-key"),
        pytest.param(signed_by_another_node, "signed by another node", id="another-node"),
        pytest.param(body_changed_after_signing, "Content-Digest", id="body-changed"),
        pytest.param(signature_too_old, "clock window", id="stale-signature"),
        pytest.param(for_another_message, "another message or body", id="receipt-other-message"),
        pytest.param(for_another_body, "another message or body", id="receipt-other-digest"),
        pytest.param(not_a_receipt, "receipt does not validate", id="not-a-receipt"),
        pytest.param(rejected(401, "unknown_key"), "HTTP 401 [unknown_key]", id="signed-401"),
        pytest.param(rejected(429, "rate_limited"), "HTTP 429 [rate_limited]", id="signed-429"),
        pytest.param(rejected(409, "replayed"), "HTTP 409 [replayed]", id="signed-409-replayed"),
        pytest.param(rejected(503, "unavailable"), "HTTP 503 [unavailable]", id="signed-503"),
        pytest.param(refused, "ConnectError", id="connection-refused"),
        pytest.param(timed_out, "ReadTimeout", id="timeout"),
    ],
)
def test_failed_delivery_is_retried_later(
    world: World, peer: respx.Router, answer: Answer, error: str
) -> None:
    peer.post(URL).mock(side_effect=answering(world, answer))
    (message_id,) = world.enqueue()
    relay = world.relay()

    assert run_once(relay) == 1

    row = world.row(message_id)
    assert row.status == OutboxStatus.pending
    assert row.attempts == 1
    assert row.last_error is not None
    assert error in row.last_error
    assert (row.lease_owner, row.lease_until) == (None, None)
    assert BASE / 2 <= backoff_of(row) <= BASE
    assert row.receipt_body is None
    assert row.delivered_at is None
    world.hook.assert_not_called()
    # Not before its time, then again once due.
    assert run_once(relay) == 0
    clock.advance(timedelta(seconds=BASE))
    assert run_once(relay) == 1
    assert world.row(message_id).attempts == 2


def test_peer_missing_from_directory_is_retried(world: World, peer: respx.Router) -> None:
    route = peer.post(URL).mock(side_effect=answering(world, accepted))
    (message_id,) = world.enqueue()
    with world.session() as session:
        remove_peer(session, PEER)
        session.commit()
    run_once(world.relay())
    row = world.row(message_id)
    assert row.status == OutboxStatus.pending
    assert row.last_error == f"peer {PEER} is not in the directory"
    assert route.call_count == 0


# --- dead ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(422, "invalid_message"), (409, "conflict"), (403, "recipient_mismatch"), (400, "digest_mismatch")],
)
def test_signed_rejection_is_dead_at_once(world: World, peer: respx.Router, status: int, code: str) -> None:
    route = peer.post(URL).mock(side_effect=answering(world, rejected(status, code)))
    (message_id,) = world.enqueue()
    relay = world.relay()
    run_once(relay)
    row = world.row(message_id)
    assert row.status == OutboxStatus.dead
    assert row.attempts == 1
    assert row.receipt_status == status
    assert row.last_error == f"HTTP {status} [{code}]: rejected by the peer"
    assert (row.lease_owner, row.lease_until) == (None, None)
    world.hook.assert_not_called()
    clock.advance(timedelta(days=1))
    assert run_once(relay) == 0
    assert route.call_count == 1


def test_unsigned_rejection_is_retried_not_dead(world: World, peer: respx.Router) -> None:
    """Anyone on the path can forge a 422; only the peer's signature makes a rejection final."""
    body, content_type = problem(422, "invalid_message"), "application/problem+json"
    peer.post(URL).mock(
        return_value=httpx.Response(422, content=body, headers={"Content-Type": content_type})
    )
    (message_id,) = world.enqueue()
    run_once(world.relay())
    assert world.row(message_id).status == OutboxStatus.pending


def test_retry_budget_spent_is_dead(world: World, peer: respx.Router) -> None:
    route = peer.post(URL).mock(side_effect=answering(world, refused))
    (message_id,) = world.enqueue()
    relay = world.relay()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert run_once(relay) == 1
        row = world.row(message_id)
        assert row.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            assert row.status == OutboxStatus.pending
            ceiling = min(CAP, BASE * 2 ** (attempt - 1))
            assert ceiling / 2 <= backoff_of(row) <= ceiling
            clock.advance(timedelta(seconds=ceiling))
    assert row.status == OutboxStatus.dead
    assert row.last_error is not None
    assert "ConnectError" in row.last_error
    clock.advance(timedelta(days=1))
    assert run_once(relay) == 0
    assert route.call_count == MAX_ATTEMPTS


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_stays_within_half_and_all_of_the_capped_exponential() -> None:
    base, cap = 2.0, 300.0
    samples = {n: [backoff_delay(n, base, cap).total_seconds() for _ in range(200)] for n in range(1, 16)}
    for n, delays in samples.items():
        ceiling = min(cap, base * 2 ** (n - 1))
        assert all(ceiling / 2 <= d <= ceiling for d in delays), n
    # Equal jitter: below the cap the floor of attempt n+1 is the ceiling of attempt n, so it never
    # shrinks from one attempt to the next...
    uncapped = [n for n in range(1, 15) if base * 2**n <= cap]
    assert uncapped == [1, 2, 3, 4, 5, 6, 7]
    for n in uncapped:
        assert min(samples[n + 1]) >= max(samples[n])
    # ...it doubles until the cap, and then stays there.
    assert max(samples[1]) <= base < min(samples[3])
    assert all(cap / 2 <= d <= cap for d in samples[15])


def test_backoff_bounds_are_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def delays() -> list[float]:  # the computed schedule; nothing is timed
        return [backoff_delay(n, 1.0, 10.0).total_seconds() for n in range(1, 7)]

    monkeypatch.setattr("service.exchange.relay.random.uniform", lambda low, _high: low)
    assert delays() == [0.5, 1, 2, 4, 5, 5]
    monkeypatch.setattr("service.exchange.relay.random.uniform", lambda _low, high: high)
    assert delays() == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(0, 1.0, 10.0).total_seconds() == 1  # never below the base


# --- claims: two relays (two replicas) on one database ----------------------------------------


def test_two_relays_never_claim_the_same_row_until_the_lease_expires(world: World) -> None:
    ids = set(world.enqueue(8))
    a, b = world.relay(relay_batch_size=4), world.relay(relay_batch_size=4)
    first_a = set(a.claim())
    clock.advance(timedelta(seconds=30))
    first_b = set(b.claim())
    assert len(first_a) == len(first_b) == 4
    assert first_a.isdisjoint(first_b)
    assert first_a | first_b == ids
    assert a.claim() == []
    assert b.claim() == []
    # A's leases run out first (it claimed 30 s earlier): then and only then B may take them.
    clock.advance(timedelta(seconds=LEASE - 30 - 1))
    assert b.claim() == []
    clock.advance(timedelta(seconds=2))
    assert set(b.claim()) == first_a
    assert a.claim() == []
    clock.advance(timedelta(seconds=30))
    assert set(a.claim()) == first_b
    # Every claim counts as an attempt.
    for message_id in ids:
        assert world.row(message_id).attempts == 2


def _claim_race(world: World, engines: list[Engine], rows: int) -> None:
    ids = set(world.enqueue(rows))
    relays = [world.relay(engine, relay_batch_size=3) for engine in engines]
    claimed: list[list[str]] = [[] for _ in relays]
    errors: list[BaseException] = []
    start = threading.Barrier(len(relays))

    def run(i: int) -> None:
        try:
            start.wait()
            while batch := relays[i].claim():
                claimed[i].extend(batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(relays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    mine = [set(c) for c in claimed]
    assert sum(len(c) for c in claimed) == rows  # nobody claimed a row twice...
    assert mine[0].isdisjoint(mine[1])  # ...no two relays claimed the same row...
    assert mine[0] | mine[1] == ids  # ...and every row was claimed
    with world.session() as session:
        owners = {r.message_id: r.lease_owner for r in session.exec(select(OutboxMessage))}
    for relay, taken in zip(relays, mine, strict=True):
        assert all(owners[m] == relay.owner for m in taken)
        assert all(world.row(m).attempts == 1 for m in taken)


def test_concurrent_claims_are_disjoint_on_sqlite(world: World, tmp_path: Path) -> None:
    engines = [make_engine(f"sqlite:///{tmp_path / 'node.db'}") for _ in range(2)]
    try:
        _claim_race(world, engines, rows=60)
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_concurrent_claims_are_disjoint_on_postgres(
    tmp_path: Path,
    frozen: None,  # noqa: ARG001
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    engines = [make_engine(url) for _ in range(3)]
    try:
        world = new_world(tmp_path, engines[2])
        _claim_race(world, engines[:2], rows=60)
    finally:
        for engine in engines:
            engine.dispose()


def test_late_failure_does_not_touch_a_row_another_relay_holds(world: World, peer: respx.Router) -> None:
    """A relay whose lease ran out must not release, reschedule or kill the new holder's claim."""
    peer.post(URL).mock(side_effect=answering(world, accepted))
    (message_id,) = world.enqueue()
    slow, fast = world.relay(), world.relay()
    assert slow.claim() == [message_id]
    slow_row = world.row(message_id)
    clock.advance(timedelta(seconds=LEASE + 1))
    assert fast.claim() == [message_id]
    held = world.row(message_id)

    slow.record(slow_row, Attempt("retry", "ReadTimeout: timed out"))
    slow.record(slow_row, Attempt("dead", "HTTP 422 [invalid_message]: rejected by the peer", status=422))

    row = world.row(message_id)
    assert row.status == OutboxStatus.pending
    assert (row.lease_owner, row.lease_until) == (fast.owner, held.lease_until)
    assert row.next_attempt_at == held.next_attempt_at
    assert row.last_error is None
    assert row.attempts == 2
    fast.record(held, asyncio.run(fast.deliver(held, URL)))
    assert world.row(message_id).status == OutboxStatus.delivered
    world.hook.assert_called_once()


def test_late_relay_after_lease_expiry_does_not_record_twice(world: World, peer: respx.Router) -> None:
    """A slow relay whose lease ran out and a second relay both deliver: one delivery, one hook call."""
    peer.post(URL).mock(side_effect=answering(world, accepted))
    (message_id,) = world.enqueue()
    slow, fast = world.relay(), world.relay()
    assert slow.claim() == [message_id]
    slow_row = world.row(message_id)  # what the slow relay holds while its HTTP call hangs
    clock.advance(timedelta(seconds=LEASE + 1))
    assert run_once(fast) == 1
    assert world.row(message_id).status == OutboxStatus.delivered
    world.hook.assert_called_once()
    delivered = world.row(message_id)

    # The slow relay's answer comes in at last: a receipt (ignored) or a failure (ignored too).
    slow.record(slow_row, asyncio.run(slow.deliver(slow_row, URL)))
    failed = Attempt("retry", "ReadTimeout: timed out")
    slow.record(slow_row, failed)
    dead = Attempt("dead", "HTTP 422 [invalid_message]: rejected by the peer", status=422)
    slow.record(slow_row, dead)

    row = world.row(message_id)
    world.hook.assert_called_once()
    assert row.status == OutboxStatus.delivered
    assert row.receipt_body == delivered.receipt_body
    assert row.receipt_signature == delivered.receipt_signature
    assert row.last_error is None


# --- one peer's trouble is that peer's: per-peer limits, circuits, Retry-After -----------------


def other_accepts(world: World) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: signed(
        202, receipt(request), world.other_key, keyid=f"{OTHER}/k1", request=request
    )


def test_one_claim_takes_at_most_the_per_peer_limit_of_each_peer(world: World) -> None:
    world.enqueue(10)  # due first
    others = world.enqueue(3, recipient=OTHER)
    relay = world.relay(relay_peer_concurrency=4, relay_concurrency=8)
    claimed = relay.claim()
    assert len(claimed) == 7
    assert set(others) <= set(claimed)


def test_circuit_opens_after_failures_in_a_row_and_one_probe_decides() -> None:
    circuits = Circuits(3, cooldown=lambda opened: timedelta(seconds=10 * opened))
    at = T0

    def room(peer: str = PEER, after: float = 0) -> int:
        return circuits.room(peer, at + timedelta(seconds=after), 4)

    circuits.failed(PEER, at)
    circuits.failed(PEER, at)
    circuits.succeeded(PEER)  # a success in between: the count starts again
    circuits.failed(PEER, at)
    circuits.failed(PEER, at)
    assert room() == 4
    circuits.failed(PEER, at)  # the third in a row: open for cooldown(1)
    assert circuits.not_closed() == {PEER}
    assert (room(), room(after=9.9), room(after=10)) == (0, 0, 1)  # then half open: one probe
    circuits.failed(PEER, at + timedelta(seconds=5))  # a delivery that started before it opened
    assert room(after=10) == 1  # does not extend it
    at += timedelta(seconds=10)
    circuits.failed(PEER, at)  # the probe failed: open again, for longer
    assert (room(after=19.9), room(after=20)) == (0, 1)
    circuits.succeeded(PEER)  # a probe came back: closed
    assert room() == 4
    assert circuits.not_closed() == set()
    # The peer's own word (Retry-After) opens it at once, for as long as it asked.
    circuits.failed(OTHER, at, hold=timedelta(seconds=100))
    assert (room(OTHER, 99.9), room(OTHER, 100)) == (0, 1)


def test_a_failing_peer_waits_as_a_whole_while_the_others_flow(world: World, peer: respx.Router) -> None:
    down = peer.post(URL).mock(side_effect=answering(world, refused))
    up = peer.post(OTHER_ENDPOINT).mock(side_effect=other_accepts(world))
    world.enqueue(3)
    relay = world.relay()
    assert run_once(relay) == 3  # three failures in a row: PEER's circuit opens
    waiting = world.enqueue(5)  # due now, but PEER is left alone...
    others = world.enqueue(3, recipient=OTHER)
    assert run_once(relay) == 3  # ...while OTHER's messages go at once
    assert all(world.row(m).status == OutboxStatus.delivered for m in others)
    assert all(world.row(m).attempts == 0 for m in waiting)  # their retry budget untouched
    assert down.call_count == 3
    assert up.call_count == 3

    # After the cooldown (at most the backoff base the first time), one probe at a time.
    clock.advance(timedelta(seconds=BASE))
    assert run_once(relay) == 1
    assert down.call_count == 4
    assert run_once(relay) == 0  # it failed: open again, for up to twice as long
    clock.advance(timedelta(seconds=2 * BASE))
    down.side_effect = answering(world, accepted)  # the peer is back
    assert run_once(relay) == 1  # the probe is delivered: closed
    assert run_once(relay) == 4  # everything due flows again, up to the per-peer limit at once
    assert run_once(relay) == 3
    assert all(world.row(m).status == OutboxStatus.delivered for m in waiting)


def test_a_signed_refusal_does_not_count_against_the_peer(world: World, peer: respx.Router) -> None:
    """A dead message is the message's problem: the peer answered, its circuit stays closed."""
    peer.post(URL).mock(side_effect=answering(world, rejected(422, "invalid_message")))
    relay = world.relay()
    world.enqueue(5)
    assert run_once(relay) == 4  # the per-peer limit
    assert run_once(relay) == 1
    assert relay.circuits.not_closed() == set()


def with_retry_after(status: int, value: str, *, sign: bool = True) -> Answer:
    def answer(world: World, request: httpx.Request) -> httpx.Response:
        body, content_type = problem(status, "busy"), "application/problem+json"
        if sign:
            response = signed(status, body, world.peer_key, content_type=content_type, request=request)
        else:
            response = httpx.Response(status, content=body, headers={"Content-Type": content_type})
        response.headers["Retry-After"] = value
        return response

    return answer


@pytest.mark.parametrize(
    ("answer", "wait"),
    [
        pytest.param(with_retry_after(429, "45"), 45, id="429-seconds"),
        pytest.param(
            with_retry_after(503, format_datetime(T0 + timedelta(seconds=50), usegmt=True)), 50, id="503-date"
        ),
        pytest.param(with_retry_after(503, "40", sign=False), 40, id="503-unsigned"),
        pytest.param(with_retry_after(429, "864000"), CAP, id="capped"),
    ],
)
def test_retry_after_holds_the_message_and_the_peer(
    world: World, peer: respx.Router, answer: Answer, wait: float
) -> None:
    route = peer.post(URL).mock(side_effect=answering(world, answer))
    peer.post(OTHER_ENDPOINT).mock(side_effect=other_accepts(world))
    (message_id,) = world.enqueue()
    relay = world.relay()
    assert run_once(relay) == 1
    row = world.row(message_id)
    assert row.status == OutboxStatus.pending
    assert row.attempts == 1
    assert backoff_of(row) == wait  # not before the peer asked (the clock is frozen)
    # The peer as a whole waits: a new message to it is not sent before then, others are.
    (later,) = world.enqueue()
    (other,) = world.enqueue(recipient=OTHER)
    assert run_once(relay) == 1
    assert world.row(other).status == OutboxStatus.delivered
    clock.advance(timedelta(seconds=wait - 1))
    assert run_once(relay) == 0
    assert world.row(later).attempts == 0
    clock.advance(timedelta(seconds=1))
    route.side_effect = answering(world, accepted)
    assert run_once(relay) == 1  # the probe: the circuit was held open, now half open
    assert run_once(relay) == 1
    assert {world.row(m).status for m in (message_id, later)} == {OutboxStatus.delivered}


def test_a_short_retry_after_does_not_speed_up_the_retries(world: World, peer: respx.Router) -> None:
    """The retry budget is spent no faster than the backoff spends it, whatever the peer says."""
    peer.post(URL).mock(side_effect=answering(world, with_retry_after(503, "0")))
    (message_id,) = world.enqueue()
    run_once(world.relay())
    assert BASE / 2 <= backoff_of(world.row(message_id)) <= BASE
