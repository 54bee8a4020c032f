"""The sender's side of batches (docs/protocol.md section 18), against respx: which peers get them,
and that each item's answer is judged, kept and hooked exactly as a single delivery's would be.

No node processes (tests/exchange/test_batch_e2e.py has those): a Relay over a throwaway SQLite
file, the peer played by respx, its answers signed with its key by the RFC 9421 library. Also the
batch module's own signer and verifier of item answers against that library.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from service.clock import clock, utcnow
from service.config import Settings
from service.db import make_engine
from service.errors import DomainError, SignatureExpired, SignatureInvalid, UnknownKey
from service.exchange import batch
from service.exchange.client import PeerClient
from service.exchange.envelope import canonical_json, receipt_body
from service.exchange.outbox import enqueue
from service.exchange.relay import Relay
from service.models import EvidenceSentRequest, OutboxMessage, OutboxStatus, Peer, PeerKey
from service.signing.http import (
    RequestBinding,
    content_digest,
    sign_response,
    verify_request,
    verify_response,
)
from service.signing.keys import public_key_text
from service.signing.node import NodeSigner

ME, PEER = "410105", "411627"
PEER_KEYID = f"{PEER}/k1"
PEER_URL = "http://taikang.test"
PATH = "/verification-requests"
SINGLE, BATCH, NODE = f"{PEER_URL}/peer/v1{PATH}", f"{PEER_URL}/peer/v1/batch", f"{PEER_URL}/peer/v1/node"
REQUEST = "verification.request"
T0 = datetime(2026, 11, 22, 1, 30, tzinfo=UTC)
CAP = 60.0


class Ping(BaseModel):
    text: str


@dataclass
class World:
    tmp: Path
    engine: Engine
    signer: NodeSigner
    peer_key: Ed25519PrivateKey
    hook: Mock = field(default_factory=Mock)

    def relay(self, **changes: Any) -> Relay:
        values: dict[str, Any] = {
            "data_dir": self.tmp,
            "relay_max_attempts": 3,
            "relay_backoff_base_seconds": 2.0,
            "relay_backoff_cap_seconds": CAP,
            "relay_lease_seconds": 60,
            "relay_batch_size": 20,
            "peer_timeout_seconds": 5.0,
        }
        settings = Settings(**(values | changes))
        return Relay(
            settings,
            lambda: Session(self.engine, expire_on_commit=False),
            self.signer,
            {REQUEST: self.hook},
            client=PeerClient(timeout=settings.peer_timeout_seconds),
        )

    def enqueue(self, n: int, text: str = "") -> list[str]:
        with Session(self.engine) as session:
            rows = [
                enqueue(
                    session,
                    type=REQUEST,
                    sender=ME,
                    recipient=PEER,
                    path=PATH,
                    payload=Ping(text=text or f"#{i}"),
                )
                for i in range(n)
            ]
            session.commit()
            return [r.message_id for r in rows]

    def row(self, message_id: str) -> OutboxMessage:
        with Session(self.engine) as session:
            row = session.get(OutboxMessage, message_id)
            assert row is not None
            return row


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock.freeze(T0)
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    SQLModel.metadata.create_all(engine)
    world = World(
        tmp_path,
        engine,
        NodeSigner(ME, "金水区", f"{ME}/k1", Ed25519PrivateKey.generate()),
        Ed25519PrivateKey.generate(),
    )
    with Session(engine) as session:
        session.add(Peer(node_id=PEER, name=PEER, url=PEER_URL))
        session.flush()
        session.add(
            PeerKey(keyid=PEER_KEYID, node_id=PEER, public_key=public_key_text(world.peer_key.public_key()))
        )
        session.commit()
    yield world
    engine.dispose()
    clock.reset()


@pytest.fixture
def peer() -> Iterator[respx.Router]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def run_once(relay: Relay) -> int:
    return asyncio.run(relay.sweep())


# --- the peer -----------------------------------------------------------------------------------------


def node_info(batch_limits: dict[str, int] | None = None, node_id: str = PEER) -> httpx.Response:
    info: dict[str, Any] = {"node_id": node_id, "name": "太康县", "keys": [], "protocol": "yipanqi/1"}
    if batch_limits is not None:
        info |= {"capabilities": ["batch"], "batch": {"path": "/peer/v1/batch", **batch_limits}}
    return httpx.Response(200, json=info)


BATCH_OK = {"max_items": 1000, "max_body_bytes": 1024 * 1024}


def bound(request: httpx.Request) -> RequestBinding | None:
    """What an answer to ``request`` is bound to (docs/protocol.md section 6.1)."""
    return RequestBinding.of_request(request.url.raw_path.decode("ascii"), request.headers.multi_items())


def signed(
    world: World,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    *,
    request: httpx.Request,
) -> httpx.Response:
    """The peer's signed answer to ``request`` (bound to it, as every peer answer is)."""
    headers = sign_response(
        status=status,
        body=body,
        key=world.peer_key,
        keyid=PEER_KEYID,
        created=utcnow(),
        content_type=content_type,
        request=bound(request),
    )
    return httpx.Response(status, content=body, headers=headers)


def answering_with(world: World, status: int, body: bytes, content_type: str = "application/json") -> Any:
    """A respx side effect: this answer, signed for each request it answers."""
    return lambda request: signed(world, status, body, content_type, request=request)


def receipt_for(message: bytes, status: str = "accepted") -> bytes:
    return receipt_body(
        message_id=json.loads(message)["message_id"],
        status=status,
        received_at=utcnow(),
        digest=content_digest(message),
        due_at=utcnow() + timedelta(days=30),
    )


def problem(status: int, code: str) -> bytes:
    return canonical_json(
        {"type": "about:blank", "title": code, "status": status, "detail": "", "code": code}
    )


ItemAnswer = Callable[[int, bytes], tuple[int, bytes]]  # (index, message) → (status, body)


def receipts(index: int, message: bytes) -> tuple[int, bytes]:  # noqa: ARG001
    return 202, receipt_for(message)


def batch_answer(
    world: World, answer: ItemAnswer = receipts, *, forge: set[int] = frozenset()
) -> Callable[[httpx.Request], httpx.Response]:  # type: ignore[assignment]
    """The peer's answer to a batch: each item answered by ``answer``, signed with the library's
    ``sign_response`` (those in ``forge`` by another key)."""

    def respond(request: httpx.Request) -> httpx.Response:
        items = [item.encode("utf-8") for item in json.loads(request.content)["items"]]
        results = []
        for index, message in enumerate(items):
            status, body = answer(index, message)
            key = Ed25519PrivateKey.generate() if index in forge else world.peer_key
            content_type = "application/json" if status in (200, 202) else "application/problem+json"
            headers = sign_response(
                status=status,
                body=body,
                key=key,
                keyid=PEER_KEYID,
                created=utcnow(),
                content_type=content_type,
                request=bound(request),
            )
            results.append(
                {
                    "message_id": json.loads(message)["message_id"],
                    "status": status,
                    "body": body.decode("utf-8"),
                    "signature_input": headers["Signature-Input"],
                    "signature": headers["Signature"],
                }
            )
        return signed(world, 200, canonical_json({"results": results}), request=request)

    return respond


def single_receipt(world: World) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: signed(world, 202, receipt_for(request.content), request=request)


# --- the item signer and verifier ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (202, receipt_for(b'{"message_id":"0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10"}')),
        (200, b"{}"),
        (409, problem(409, "conflict")),
        (422, '{"detail":"王秀英"}'.encode()),
    ],
    # Named, not shown: the receipt's times come from the clock at collection, and pytest-xdist's
    # workers must collect the same test ids.
    ids=["receipt", "empty", "problem", "chinese-text"],
)
def test_an_item_is_signed_as_sign_response_signs_a_response(status: int, body: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    created = datetime(2026, 11, 22, 1, 30, 1, 999, tzinfo=UTC)
    content_type = batch.content_type_of(status)
    library = sign_response(
        status=status, body=body, key=key, keyid=PEER_KEYID, created=created, content_type=content_type
    )
    assert batch.sign_item(status, body, key=key, keyid=PEER_KEYID, created=created) == (
        library["Signature-Input"],
        library["Signature"],
    )
    assert content_digest(body) == library["Content-Digest"]


def _check(
    status: int, body: bytes, signature_input: str, signature: str, key: Ed25519PrivateKey, **kw: Any
) -> None:
    batch.verify_item(
        status,
        body,
        signature_input,
        signature,
        resolve_key=kw.get("resolve", lambda keyid: key.public_key() if keyid == PEER_KEYID else None),
        expected_node=kw.get("node", PEER),
        now=kw.get("now", T0),
        skew_seconds=300,
    )


def test_the_item_verifier_accepts_what_the_library_accepts_and_refuses_the_rest() -> None:
    key, body = Ed25519PrivateKey.generate(), b'{"ok":1}'
    signature_input, signature = batch.sign_item(202, body, key=key, keyid=PEER_KEYID, created=T0)
    _check(202, body, signature_input, signature, key)
    refusals: list[tuple[dict[str, Any], type[DomainError]]] = [
        ({"body": b'{"ok":2}'}, SignatureInvalid),
        ({"status": 200}, SignatureInvalid),
        ({"node": "310110"}, UnknownKey),
        ({"resolve": lambda _keyid: None}, UnknownKey),
        ({"now": T0 + timedelta(seconds=301)}, SignatureExpired),
        ({"resolve": lambda _keyid: Ed25519PrivateKey.generate().public_key()}, SignatureInvalid),
    ]
    for change, error in refusals:
        status, changed = change.pop("status", 202), change.pop("body", body)
        with pytest.raises(error):
            _check(status, changed, signature_input, signature, key, **change)
    # Another form than yipanqi's (parameters in another order) goes through the library: same verdicts.
    reordered = signature_input.replace(';alg="ed25519";tag="yipanqi/1"', ';tag="yipanqi/1";alg="ed25519"')
    with pytest.raises(SignatureInvalid):
        _check(202, body, reordered, signature, key)
    with pytest.raises(DomainError):
        _check(202, body, "yp=garbage", signature, key)


# --- which peers get batches --------------------------------------------------------------------------


def test_a_peer_that_advertises_batches_gets_them(world: World, peer: respx.Router) -> None:
    info = peer.get(NODE).mock(return_value=node_info(BATCH_OK))
    singles = peer.post(SINGLE).mock(side_effect=single_receipt(world))
    batches = peer.post(BATCH).mock(side_effect=batch_answer(world))
    ids = world.enqueue(30)
    relay = world.relay()
    # First round: capabilities not known yet (read in the background): single requests.
    assert run_once(relay) == 4
    assert (singles.call_count, batches.call_count, info.call_count) == (4, 0, 1)
    # Then one batch takes all the rest (one of the peer's delivery slots).
    assert run_once(relay) == 26
    assert (singles.call_count, batches.call_count, info.call_count) == (4, 1, 1)
    sent = json.loads(batches.calls.last.request.content)["items"]
    assert [item.encode("utf-8") for item in sent] == [world.row(m).body for m in ids[4:]]
    request = batches.calls.last.request
    verify_request(
        method="POST",
        path="/peer/v1/batch",
        headers=request.headers.multi_items(),
        body=request.content,
        resolve_key=lambda keyid: world.signer.private_key.public_key() if keyid == f"{ME}/k1" else None,
        now=utcnow(),
    )
    sent = {json.loads(call.request.content)["message_id"]: call.request for call in singles.calls}
    for message_id in ids:
        row = world.row(message_id)
        assert (row.status, row.attempts, row.receipt_status) == (OutboxStatus.delivered, 1, 202)
        assert row.receipt_body is not None
        assert row.receipt_signature_input is not None
        assert row.receipt_signature is not None
        verify_response(  # each batch receipt is evidence on its own, like a single one
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
            request=bound(sent.get(message_id, request)),  # bound to the request that carried it
        )
    assert world.hook.call_count == 30
    # One message due: a single request, even to a peer that takes batches.
    world.enqueue(1)
    assert run_once(relay) == 1
    assert (singles.call_count, batches.call_count) == (5, 1)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            httpx.Response(200, json={"node_id": PEER, "name": "x", "keys": []}), id="not-advertised"
        ),
        pytest.param(node_info({"max_items": 1, "max_body_bytes": 1024}), id="batches-of-one"),
        pytest.param(node_info(BATCH_OK, node_id="310110"), id="another-node"),
        pytest.param(httpx.Response(404, json={"code": "not_found"}), id="no-node-endpoint"),
        pytest.param(httpx.Response(200, content=b"<html>"), id="not-json"),
        pytest.param(httpx.ConnectError("refused"), id="unreachable"),
    ],
)
def test_a_peer_that_does_not_advertise_batches_gets_single_requests(
    world: World, peer: respx.Router, answer: Any
) -> None:
    info = (
        peer.get(NODE).mock(side_effect=[answer])
        if isinstance(answer, Exception)
        else peer.get(NODE).mock(return_value=answer)
    )
    singles = peer.post(SINGLE).mock(side_effect=single_receipt(world))
    batches = peer.post(BATCH).mock(side_effect=batch_answer(world))
    ids = world.enqueue(12)
    relay = world.relay()
    while run_once(relay):
        pass
    assert (singles.call_count, batches.call_count) == (12, 0)
    assert info.call_count == 1  # read once, then kept (the clock does not move here)
    assert {world.row(m).status for m in ids} == {OutboxStatus.delivered}


def test_capabilities_are_read_again_after_a_while(world: World, peer: respx.Router) -> None:
    info = peer.get(NODE).mock(return_value=node_info())
    peer.post(SINGLE).mock(side_effect=single_receipt(world))
    batches = peer.post(BATCH).mock(side_effect=batch_answer(world))
    relay = world.relay(relay_capability_ttl_seconds=100)
    world.enqueue(2)
    run_once(relay)
    assert info.call_count == 1
    info.return_value = node_info(BATCH_OK)  # the peer upgraded
    clock.advance(timedelta(seconds=101))
    world.enqueue(2)
    run_once(relay)  # still singles; the peer is read again meanwhile
    assert info.call_count == 2
    world.enqueue(3)
    assert run_once(relay) == 3
    assert batches.call_count == 1


def _batching_relay(world: World, peer: respx.Router, **changes: Any) -> Relay:
    """A relay that already knows the peer takes batches."""
    peer.get(NODE).mock(return_value=node_info(BATCH_OK))
    peer.post(SINGLE).mock(side_effect=single_receipt(world))
    relay = world.relay(**changes)
    world.enqueue(2, text="warm-up")
    assert run_once(relay) == 2
    assert relay.capabilities.batch(PEER) is not None
    return relay


# --- each item as a single delivery --------------------------------------------------------------------


def test_each_item_is_delivered_retried_or_dead_as_it_would_be_alone(
    world: World, peer: respx.Router
) -> None:
    relay = _batching_relay(world, peer)
    world.hook.reset_mock()

    def answer(index: int, message: bytes) -> tuple[int, bytes]:
        if index == 1:
            return 200, receipt_for(message, "duplicate")
        if index == 2:
            return 422, problem(422, "invalid_message")
        if index == 3:
            return 500, problem(500, "internal_error")
        if index == 4:
            return 202, receipt_for(b'{"message_id":"0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10"}')  # another's
        if index == 6:
            return 409, problem(409, "conflict")
        return 202, receipt_for(message)

    peer.post(BATCH).mock(side_effect=batch_answer(world, answer, forge={5}))
    ids = world.enqueue(8)
    assert run_once(relay) == 8
    rows = [world.row(m) for m in ids]
    assert [(r.status, r.receipt_status) for r in rows] == [
        (OutboxStatus.delivered, 202),
        (OutboxStatus.delivered, 200),
        (OutboxStatus.dead, 422),
        (OutboxStatus.pending, 500),
        (OutboxStatus.pending, 202),
        (OutboxStatus.pending, None),
        (OutboxStatus.dead, 409),
        (OutboxStatus.delivered, 202),
    ]
    assert rows[2].last_error == "HTTP 422 [invalid_message]: rejected by the peer"
    assert rows[3].last_error == "HTTP 500 [internal_error]"
    assert rows[4].last_error == "receipt is for another message or body"
    assert "answer not accepted" in str(rows[5].last_error)
    assert all(r.attempts == 1 for r in rows)
    assert all(r.next_attempt_at > utcnow() for r in rows if r.status == OutboxStatus.pending)  # backoff
    assert world.hook.call_count == 3  # once per delivered message
    assert relay.circuits.closed(PEER)  # the peer answered: its circuit stays closed


def test_a_batch_answer_that_is_not_one_retries_every_item(world: World, peer: respx.Router) -> None:
    relay = _batching_relay(world, peer)
    answers = iter(
        [
            lambda _request: httpx.Response(
                200, content=b'{"results":[]}', headers={"Content-Type": "application/json"}
            ),  # unsigned
            answering_with(world, 200, b'{"results":[]}'),  # signed, but one result short
            answering_with(world, 200, b"[]"),
        ]
    )
    peer.post(BATCH).mock(side_effect=lambda request: next(answers)(request))
    ids = world.enqueue(3)
    for expected in ("response not accepted", "does not validate", "does not validate"):
        clock.advance(timedelta(seconds=CAP))
        assert run_once(relay) == 3
        assert all(expected in (world.row(m).last_error or "") for m in ids), [
            world.row(m).last_error for m in ids
        ]
    assert {world.row(m).status for m in ids} == {OutboxStatus.dead}  # three attempts: the budget
    assert world.hook.call_count == 2  # only the warm-up


def test_retry_after_on_a_batch_holds_every_item_and_the_peer(world: World, peer: respx.Router) -> None:
    relay = _batching_relay(world, peer)

    def busy(request: httpx.Request) -> httpx.Response:
        response = signed(world, 503, problem(503, "busy"), "application/problem+json", request=request)
        response.headers["Retry-After"] = "45"
        return response

    route = peer.post(BATCH).mock(side_effect=busy)
    ids = world.enqueue(5)
    assert run_once(relay) == 5
    assert route.call_count == 1
    for message_id in ids:
        row = world.row(message_id)
        assert (row.status, row.attempts) == (OutboxStatus.pending, 1)
        assert (row.next_attempt_at - utcnow()).total_seconds() == 45
    assert not relay.circuits.closed(PEER)
    clock.advance(timedelta(seconds=44))
    assert run_once(relay) == 0
    clock.advance(timedelta(seconds=1))
    route.side_effect = batch_answer(world)
    assert run_once(relay) == 1  # the probe of a half-open circuit is one message, on its own endpoint
    assert route.call_count == 1
    assert run_once(relay) == 4  # closed again: the rest in one batch
    assert route.call_count == 2
    assert {world.row(m).status for m in ids} == {OutboxStatus.delivered}


@pytest.mark.parametrize(
    ("status", "code"), [(404, "not_found"), (413, "payload_too_large"), (422, "invalid_message")]
)
def test_a_batch_refused_as_a_whole_goes_again_singly_at_no_cost(
    world: World, peer: respx.Router, status: int, code: str
) -> None:
    relay = _batching_relay(world, peer)
    route = peer.post(BATCH).mock(
        side_effect=answering_with(world, status, problem(status, code), "application/problem+json")
    )
    ids = world.enqueue(5)
    assert run_once(relay) == 5
    assert route.call_count == 1
    for message_id in ids:
        row = world.row(message_id)
        assert (row.status, row.attempts, row.next_attempt_at) == (OutboxStatus.pending, 0, utcnow())
        assert row.last_error == f"HTTP {status} [{code}] to the batch: sending singly"
    assert relay.circuits.closed(PEER)
    while run_once(relay):
        pass
    assert route.call_count == 1  # no more batches for a while
    assert {(world.row(m).status, world.row(m).attempts) for m in ids} == {(OutboxStatus.delivered, 1)}


def test_batches_keep_to_the_peers_limits(world: World, peer: respx.Router) -> None:
    peer.get(NODE).mock(return_value=node_info({"max_items": 3, "max_body_bytes": 4096}))
    singles = peer.post(SINGLE).mock(side_effect=single_receipt(world))
    batches = peer.post(BATCH).mock(side_effect=batch_answer(world))
    relay = world.relay()
    world.enqueue(2, text="warm-up")
    run_once(relay)
    world.enqueue(1, text="x" * 5000)  # too big for any batch of this peer: alone
    ids = world.enqueue(7)
    while run_once(relay):
        pass
    assert all(len(json.loads(c.request.content)["items"]) <= 3 for c in batches.calls)
    assert all(len(c.request.content) <= 4096 for c in batches.calls)
    assert singles.call_count == 3  # the warm-up and the big one
    assert {world.row(m).status for m in ids} == {OutboxStatus.delivered}


# --- recording a batch's deliveries ----------------------------------------------------------------------


def _evidence(world: World, message_ids: list[str]) -> dict[str, tuple[str, str]]:
    with Session(world.engine) as session:
        rows = session.exec(
            select(EvidenceSentRequest).where(col(EvidenceSentRequest.message_id).in_(message_ids))
        ).all()
        return {r.message_id: (r.path, r.digest) for r in rows}


@pytest.mark.parametrize("bulk_fails", [False, True], ids=["bulk", "bulk-fails-then-one-by-one"])
def test_a_batchs_deliveries_are_recorded_as_one_by_one(
    world: World, peer: respx.Router, bulk_fails: bool
) -> None:
    """The bulk hook takes every delivery of the batch at once, with its receipt; the outbox rows
    and the sent request kept as evidence are the same as a single delivery's. If the bulk form
    fails, nothing of it is left and each delivery is recorded on its own (the per-row hook)."""
    relay = _batching_relay(world, peer)
    world.hook.reset_mock()
    bulk = Mock(side_effect=RuntimeError("a bug in the bulk hook") if bulk_fails else None)
    relay.bulk_hooks = {REQUEST: bulk}
    route = peer.post(BATCH).mock(side_effect=batch_answer(world))
    ids = world.enqueue(6)
    assert run_once(relay) == 6
    assert bulk.call_count == 1
    _session, deliveries = bulk.call_args.args
    assert [row.message_id for row, _receipt in deliveries] == ids
    assert [str(receipt.message_id) for _row, receipt in deliveries] == ids
    assert world.hook.call_count == (6 if bulk_fails else 0)
    digest = route.calls.last.request.headers["Content-Digest"]
    assert _evidence(world, ids) == dict.fromkeys(ids, ("/peer/v1/batch", digest))
    for message_id in ids:
        row = world.row(message_id)
        assert (row.status, row.receipt_status, row.lease_owner) == (OutboxStatus.delivered, 202, None)
        assert row.receipt_received_at is not None
        assert row.receipt_due_at is not None


def test_a_delivery_whose_hook_fails_stays_leased_and_the_others_are_recorded(
    world: World, peer: respx.Router
) -> None:
    relay = _batching_relay(world, peer)
    ids = world.enqueue(4)
    relay.bulk_hooks = {REQUEST: Mock(side_effect=RuntimeError("bulk"))}

    def hook(_session: Session, row: OutboxMessage, _receipt: object) -> None:
        if row.message_id == ids[2]:
            raise RuntimeError("a bug on this one message's data")

    world.hook.side_effect = hook
    peer.post(BATCH).mock(side_effect=batch_answer(world))
    assert run_once(relay) == 4
    rows = [world.row(m) for m in ids]
    assert [r.status for r in rows] == [OutboxStatus.delivered] * 2 + [
        OutboxStatus.pending,
        OutboxStatus.delivered,
    ]
    assert rows[2].lease_owner is not None  # tried again when the lease runs out
    assert set(_evidence(world, ids)) == {ids[0], ids[1], ids[3]}


def test_a_delivery_recorded_already_is_not_recorded_again(world: World, peer: respx.Router) -> None:
    """Another replica recorded one of the batch's messages meanwhile: its row and evidence stay as
    they are, and the hook is not run for it a second time."""
    relay = _batching_relay(world, peer)
    bulk = Mock()
    relay.bulk_hooks = {REQUEST: bulk}
    ids = world.enqueue(3)

    def answer_and_record_one(request: httpx.Request) -> httpx.Response:
        with Session(world.engine) as session:
            row = session.get(OutboxMessage, ids[1])
            assert row is not None
            row.status, row.receipt_status = OutboxStatus.delivered, 299
            session.add(row)
            session.commit()
        return batch_answer(world)(request)

    peer.post(BATCH).mock(side_effect=answer_and_record_one)
    assert run_once(relay) == 3
    assert [row.message_id for row, _r in bulk.call_args.args[1]] == [ids[0], ids[2]]
    assert world.row(ids[1]).receipt_status == 299
    assert set(_evidence(world, ids)) == {ids[0], ids[2]}
