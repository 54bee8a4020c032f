"""The bulk path of batch ingest (``PeerEndpoint.handle_many``) against the per-item path.

The same batch — new 通报 of several kinds (one acknowledged on receipt, so with an ack queued in
the outbox), items refused before storage, the same message twice in the batch, messages already
stored (the same body and another), acks that are taken, refused by the conversation (unknown,
not the counterparty, an incoming notification, a second ack) or repeated; and the same for 协查:
requests of every deadline rule (new, twice in the batch, stored before, another body, refused
before storage, the message_id of a request this node sent), their 签收 and 反馈 (taken, a second
one, unknown, not the counterparty, an incoming case, acknowledged or answered before; a reply
without an ack first; an ack after the reply), with the reply listeners heard in the same order —
goes through ``routes._accept_batch`` twice, into two databases prepared
the same way: once with the node's endpoints as they are, once with every ``handle_many`` taken
away (each item's handler in a SAVEPOINT of its own, as before the bulk path). The answers must be
the same bytes, and every table the same rows. SQLite, and PostgreSQL when YIPANQI_TEST_DATABASE_URL
is set. The clock is frozen and the outbox's UUIDv7s come from a counter, so that "the same" can
be exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, insert, inspect, select
from sqlmodel import Session, SQLModel

from service.clock import clock
from service.config import Settings
from service.db import make_engine, transaction
from service.directory.service import KeySpec, add_peer
from service.errors import InvalidMessage
from service.exchange import batch, outbox, routes
from service.exchange.inbox import PeerEndpoint, load_json
from service.exchange.security import PeerRequest
from service.main import PEER_ENDPOINTS
from service.migrations import upgrade
from service.models import NotificationKind, SeenNonce, VerificationCase
from service.notifications import service
from service.notifications.schemas import NotificationCreate
from service.signing import pii
from service.signing.http import sign_request, verify_request
from service.signing.keys import public_key_text
from service.signing.node import NodeSigner
from service.sla.deadlines import SHANGHAI, DeadlineRule
from service.verification import service as verification
from service.verification.schemas import VerificationRequestCreate
from tests.conftest import PostgresServer
from tests.notifications.test_details import SUBJECT, VALID

HOST, ASKER, STRANGER = "411627", "410105", "310110"
NOW = datetime(2026, 6, 10, 2, 0, 7, 250000, tzinfo=UTC)
BATCH = "/peer/v1/batch"
ASKER_KEY, STRANGER_KEY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
NOWHERE = "http://127.0.0.1:9"

BULK = {e.message_type: e for e in PEER_ENDPOINTS if not e.synchronous}
PER_ITEM = {t: replace(e, handle_many=None) for t, e in BULK.items()}


def test_the_notification_and_verification_endpoints_have_a_bulk_path() -> None:
    assert {t for t, e in BULK.items() if e.handle_many is not None} == {
        "notification",
        "notification.ack",
        "verification.request",
        "verification.ack",
        "verification.reply",
    }
    assert all(e.handle_many is None for e in PER_ITEM.values())


# --- databases prepared the same way ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Makes empty node databases (the migrations' schema) on the fixture's backend."""
    engines: list[Engine] = []

    def make() -> Engine:
        if request.param == "postgres":
            server: PostgresServer = request.getfixturevalue("postgres")
            url = server.new_database()
        else:
            url = f"sqlite:///{tmp_path / f'node{len(engines)}.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture(autouse=True)
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The clock stopped; the receiving node acknowledges arrivals on receipt, births in 5 working days."""
    settings = Settings(
        deadline_notification_birth=DeadlineRule(days=5, unit="working"),
        notification_auto_ack_kinds=[NotificationKind.arrival],
    )
    monkeypatch.setattr(service, "get_settings", lambda: settings)
    clock.freeze(NOW)
    try:
        yield
    finally:
        clock.reset()


def counting_uuid7(monkeypatch: pytest.MonkeyPatch, start: int = 1) -> None:
    """The outbox's message ids from a counter, from ``start``."""
    counter = iter(range(start, 10**6))

    class Uuid6:
        @staticmethod
        def uuid7() -> uuid.UUID:
            return uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | next(counter))

    monkeypatch.setattr(outbox, "uuid6", Uuid6)


def signed_batch(body: bytes) -> PeerRequest:
    """The batch signed by ASKER; its nonce from its body (the same request for both databases)."""
    nonce = hashlib.sha256(body).hexdigest()[:32]
    headers = sign_request(
        method="POST", path=BATCH, body=body, key=ASKER_KEY, keyid=f"{ASKER}/k1", created=NOW, nonce=nonce
    )
    signature = verify_request(
        method="POST",
        path=BATCH,
        headers=headers.items(),
        body=body,
        resolve_key=lambda _keyid: ASKER_KEY.public_key(),
        now=NOW,
    )
    return PeerRequest(body, signature)


def take(
    engine: Engine, endpoints: dict[str, PeerEndpoint], request: PeerRequest, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str | None, int, str]]:
    """The batch through the route's own function, into ``engine``: (message_id, status, body) per item."""
    monkeypatch.setattr(routes, "transaction", partial(transaction, engine))
    answers = routes._accept_batch(endpoints, request, Settings.model_construct(), HOST)
    return [(a.message_id, a.status, a.body.decode("utf-8")) for a in answers]


def contents(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows, in primary key order (the tables of the models that the migrations made)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    made = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table in [t for t in SQLModel.metadata.sorted_tables if t.name in made]:
            query = select(table).order_by(*table.primary_key.columns)
            tables[table.name] = [dict(row._mapping) for row in conn.execute(query)]
    return _cases_numbered_densely(tables)


def _cases_numbered_densely(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """verification_case.id by rank, in every column that refers to it: on PostgreSQL the bulk path's
    ``INSERT … ON CONFLICT DO NOTHING`` draws a sequence value for a 协查 request it refuses too, so
    there the ids after one have a gap that the per-item path's have not. Which case is which, and
    what refers to which, is still compared."""
    if "verification_case" not in tables:
        return tables
    rank = {row["id"]: n for n, row in enumerate(tables["verification_case"], 1)}
    referring = [
        (fk.parent.table.name, fk.parent.name)
        for table in SQLModel.metadata.sorted_tables
        for fk in table.foreign_keys
        if fk.column.table.name == "verification_case" and fk.column.name == "id"
    ] + [("verification_case", "id")]
    for table_name, column in referring:
        for row in tables.get(table_name, []):
            if row[column] is not None:
                row[column] = rank[row[column]]
    return tables


# --- the messages ----------------------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def envelope(
    type: str, payload: dict[str, Any], *, correlation_id: str | None = None, **changes: Any
) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "type": type,
        "sender": ASKER,
        "recipient": HOST,
        "sent_at": (NOW - timedelta(minutes=3)).astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
        "correlation_id": correlation_id,
        "payload": payload,
        **changes,
    }


def notification(kind: str, **changes: Any) -> dict[str, Any]:
    occurred = "2025-08-01" if kind != "arrival" else VALID[kind]["arrived_on"]
    payload = {"subject": SUBJECT, "kind": kind, "occurred_on": occurred, "details": VALID[kind]}
    return envelope("notification", payload, **changes)


def ack(notification_message_id: str, **changes: Any) -> dict[str, Any]:
    at = NOW.astimezone(SHANGHAI).replace(microsecond=0).isoformat()
    return envelope(
        "notification.ack", {"acknowledged_at": at}, correlation_id=notification_message_id, **changes
    )


def request(topic: str = "marital_status", priority: str = "normal", **changes: Any) -> dict[str, Any]:
    payload = {
        "subject": SUBJECT,
        "topic": topic,
        "priority": priority,
        "key_target": topic == "birth_registration",
        "question": f"请核实该对象婚育情况（{topic}）。",
    }
    if priority == "urgent":
        payload["reference"] = "金公协〔2026〕17号"
    return envelope("verification.request", payload, **changes)


def request_ack(request_id: str, promised_by: str | None = None, **changes: Any) -> dict[str, Any]:
    at = (NOW - timedelta(minutes=1)).astimezone(SHANGHAI).replace(microsecond=0).isoformat()
    payload: dict[str, Any] = {"acknowledged_at": at}
    if promised_by is not None:
        payload["promised_by"] = promised_by
    return envelope("verification.ack", payload, correlation_id=request_id, **changes)


def request_reply(request_id: str, outcome: str = "confirmed", **changes: Any) -> dict[str, Any]:
    at = (NOW - timedelta(seconds=30)).astimezone(SHANGHAI).replace(microsecond=0).isoformat()
    payload = {"outcome": outcome, "findings": f"经核查，{outcome}。", "answered_at": at}
    return envelope("verification.reply", payload, correlation_id=request_id, **changes)


def asked(session: Session, recipient: str, topic: str = "marital_status") -> str:
    """A 协查 request this node sent (the batch's acks and replies answer it); its message_id."""
    data = VerificationRequestCreate.model_validate(
        {"recipient": recipient, "subject": SUBJECT, "topic": topic, "question": "请核实。"}
    )
    signer = NodeSigner(HOST, "太康县", f"{HOST}/k1", Ed25519PrivateKey.generate())
    return verification.create_outgoing(session, signer, data, "clerk").request_message_id


def outgoing(session: Session, recipient: str, kind: str = "birth") -> str:
    """A 通报 this node sent (its ack is what the batch's acks answer); its message_id."""
    data = NotificationCreate.model_validate(
        {
            "recipient": recipient,
            "subject": SUBJECT,
            "kind": kind,
            "occurred_on": "2025-08-01",
            "details": VALID[kind],
        }
    )
    signer = NodeSigner(HOST, "太康县", f"{HOST}/k1", Ed25519PrivateKey.generate())
    return service.create_outgoing(session, signer, data, "clerk").message_id


class Scenario:
    """The state both databases start from, and the batch, built once (the same bytes for both)."""

    def __init__(self) -> None:
        self.stored = [notification("pregnancy"), notification("arrival")]
        self.new_arrival, self.new_birth = notification("arrival"), notification("birth")
        self.stored_requests = [request(), request("contraception")]
        self.new_request = request()
        self.items: list[bytes] = []
        self.expected: list[int] = []
        self.heard_bulk: list[tuple[Any, ...]] = []  # the reply listeners' calls, each way
        self.heard_item: list[tuple[Any, ...]] = []

    def prepare(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
        """Peers, four outgoing 通报 (one already acknowledged) and two incoming ones stored; six
        outgoing 协查 requests (one acknowledged, one answered) and two incoming ones stored."""
        counting_uuid7(monkeypatch)
        with Session(engine) as session:
            for node, name, key in ((ASKER, "金水区", ASKER_KEY), (STRANGER, "杨浦区", STRANGER_KEY)):
                spec = KeySpec.parse(f"{node}/k1={public_key_text(key.public_key())}")
                add_peer(session, node_id=node, name=name, url=NOWHERE, keys=[spec])
            sent = {
                "a": outgoing(session, ASKER),
                "acked": outgoing(session, ASKER, "arrival"),
                "c": outgoing(session, ASKER, "pregnancy"),
                "stranger": outgoing(session, STRANGER),
                "ra": asked(session, ASKER),
                "rb": asked(session, ASKER, "birth_registration"),
                "rc": asked(session, ASKER, "certificate_discrepancy"),
                "racked": asked(session, ASKER),
                "ranswered": asked(session, ASKER),
                "rstranger": asked(session, STRANGER),
            }
            session.commit()
        before = [
            *self.stored,
            ack(sent["acked"], message_id=str(uuid.UUID(int=1))),
            *self.stored_requests,
            request_ack(sent["racked"], message_id=str(uuid.UUID(int=2))),
            request_reply(sent["ranswered"], message_id=str(uuid.UUID(int=3))),
        ]
        answers = take(
            engine, PER_ITEM, signed_batch(batch.request_body(list(map(canonical, before)))), monkeypatch
        )
        assert [status for _, status, _ in answers] == [202] * 7
        return sent

    def build(self, sent: dict[str, str]) -> None:
        arrival, birth = self.new_arrival, self.new_birth
        ack_a = ack(sent["a"])
        refused_first = ack(str(uuid.uuid4()))  # unknown: refused; then its message_id comes again
        again_other = ack(sent["c"], message_id=refused_first["message_id"])
        plan: list[tuple[dict[str, Any] | bytes, int]] = [
            (arrival, 202),  # acknowledged on receipt: an ack queued
            (birth, 202),  # 5 working days to acknowledge
            ({**birth, "payload": {**birth["payload"], "subject": {**SUBJECT, "id_number": "1" * 18}}}, 422),
            (notification("health_check", sender=STRANGER), 403),  # sender_mismatch
            (canonical(birth), 200),  # the same message twice in the batch: a duplicate
            (
                {**arrival, "payload": {**arrival["payload"], "occurred_on": "2025-03-02"}},
                409,
            ),  # another body
            (canonical(self.stored[0]), 200),  # stored before: a duplicate with the first receipt
            ({**self.stored[1], "sent_at": "2026-06-10T09:50:00+08:00"}, 409),  # stored before, another body
            (ack_a, 202),
            (ack(sent["a"]), 409),  # a second ack, in the same run
            (ack(str(uuid.uuid4())), 404),  # unknown_request
            (ack(sent["stranger"]), 403),  # ASKER is not its counterparty: forbidden
            (ack(arrival["message_id"]), 403),  # an incoming notification (stored just now): forbidden
            (ack(sent["acked"]), 409),  # acknowledged before the batch
            (canonical(ack_a), 200),  # the same ack again: a duplicate
            (request(), 202),  # a run of one 协查 request, between the 通报 runs
            (notification("pregnancy"), 202),
            (notification("birth", message_id=sent["c"]), 409),  # the id of a notification we sent
            (refused_first, 404),
            (again_other, 202),  # the same message_id as the refused one, taken afresh
            (notification("departure", message_id=refused_first["message_id"]), 409),  # now stored as the ack
            (ack(sent["c"]), 409),
            *((notification(kind), 202) for kind in ("arrival", "contraception", "arrival", "health_check")),
            *self.verification_plan(sent),
            (b"not json", 422),
        ]
        for item, status in plan:
            self.items.append(item if isinstance(item, bytes) else canonical(item))
            self.expected.append(status)

    def verification_plan(self, sent: dict[str, str]) -> list[tuple[dict[str, Any] | bytes, int]]:
        new = self.new_request
        bad_subject = {**SUBJECT, "id_number": "1" * 18}
        ack_a, reply_a = request_ack(sent["ra"], "2026-06-20"), request_reply(sent["ra"])
        refused = request_reply(str(uuid.uuid4()))  # unknown: refused; then its message_id comes again
        return [
            (new, 202),  # normal: its deadline
            (request("marital_status", "urgent"), 202),  # urgent, with a reference
            (request("certificate_discrepancy"), 202),
            (
                {
                    **new,
                    "message_id": str(uuid.uuid4()),
                    "payload": {**new["payload"], "subject": bad_subject},
                },
                422,
            ),
            (request(sender=STRANGER), 403),  # sender_mismatch
            (request(message_id=sent["rc"]), 409),  # the id of a request this node sent
            (request("birth_registration"), 202),
            (canonical(new), 200),  # twice in the batch: a duplicate (and the run ends there)
            ({**new, "payload": {**new["payload"], "question": "另一问题。"}}, 409),  # another body
            (canonical(self.stored_requests[0]), 200),  # stored before: a duplicate
            ({**self.stored_requests[1], "sent_at": "2026-06-10T09:50:00+08:00"}, 409),  # another body
            (request("reward_eligibility", "urgent"), 202),
            (ack_a, 202),  # 签收, with a promised date
            (request_ack(sent["ra"]), 409),  # a second ack, in the same run
            (request_ack(str(uuid.uuid4())), 404),  # unknown_request
            (request_ack(sent["rstranger"]), 403),  # ASKER is not its counterparty
            (request_ack(new["message_id"]), 403),  # an incoming case (stored just now)
            (request_ack(sent["racked"]), 409),  # acknowledged before the batch
            (request_ack(sent["ranswered"]), 409),  # answered before the batch
            (canonical(ack_a), 200),  # the same ack again: a duplicate
            (request_ack(sent["rc"], "2026-07-01"), 202),
            (reply_a, 202),  # after its ack
            (request_reply(sent["rb"], "not_confirmed"), 202),  # no ack first; a listener's topic
            (request_reply(sent["ra"], "not_found"), 409),  # a second reply, in the same run
            (refused, 404),
            (request_reply(sent["rstranger"]), 403),
            (request_reply(new["message_id"]), 403),  # an incoming case
            (request_reply(sent["ranswered"]), 409),  # answered before the batch
            (request_reply(sent["racked"], "partially_confirmed"), 202),
            (canonical(reply_a), 200),
            (request_ack(sent["rb"]), 409),  # an ack after the reply
            (request_reply(sent["rc"], "confirmed", message_id=refused["message_id"]), 202),  # taken afresh
            (request(message_id=refused["message_id"]), 409),  # now stored as the reply
        ]


def run_both(
    new_database: Callable[[], Engine], monkeypatch: pytest.MonkeyPatch, bulk: dict[str, PeerEndpoint]
) -> tuple[Scenario, list[tuple[str | None, int, str]], list[tuple[str | None, int, str]], Engine, Engine]:
    scenario = Scenario()
    one, other = new_database(), new_database()
    sent = scenario.prepare(one, monkeypatch)
    assert scenario.prepare(other, monkeypatch) == sent
    assert contents(one) == contents(other)
    scenario.build(sent)
    body = batch.request_body(scenario.items)
    heard: list[tuple[Any, ...]] = []

    def listener(session: Session, case: VerificationCase) -> None:
        # What a reply listener is given (births' own runs too): the case as stored, in order.
        heard.append((case.id, case.request_message_id, case.status, case.outcome, case.findings))
        assert session.get(VerificationCase, case.id) is case

    monkeypatch.setattr(verification, "_reply_listeners", [*verification._reply_listeners, listener])
    counting_uuid7(monkeypatch, 1000)
    by_bulk = take(one, bulk, signed_batch(body), monkeypatch)
    scenario.heard_bulk, heard[:] = list(heard), []
    counting_uuid7(monkeypatch, 1000)
    by_item = take(other, PER_ITEM, signed_batch(body), monkeypatch)
    scenario.heard_item = list(heard)
    return scenario, by_bulk, by_item, one, other


def test_the_bulk_path_answers_and_stores_exactly_what_the_per_item_path_does(
    new_database: Callable[[], Engine], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.exchange.inbox"):
        scenario, by_bulk, by_item, one, other = run_both(new_database, monkeypatch, BULK)
    assert not [r for r in caplog.records if "batch bulk handler failed" in r.getMessage()]  # no fallback
    assert [status for _, status, _ in by_item] == scenario.expected
    assert by_bulk == by_item
    tables, expected = contents(one), contents(other)
    assert tables == expected
    assert scenario.heard_bulk == scenario.heard_item
    # What the batch did, so that the comparison is about something.
    assert len(tables["inbox_message"]) == 7 + scenario.expected.count(202)
    incoming = {row["message_id"]: row for row in tables["notification"] if row["direction"] == "incoming"}
    assert len(incoming) == 2 + 7  # the two stored before, seven new ones
    acks_queued = [row for row in tables["outbox_message"] if row["type"] == "notification.ack"]
    assert len(acks_queued) == 1 + 3  # each arrival acknowledged on receipt
    arrival = incoming[scenario.new_arrival["message_id"]]
    assert (arrival["status"], arrival["acknowledged_at"], arrival["auto_acknowledged"]) == (
        "acknowledged",
        NOW.replace(microsecond=0),
        True,
    )
    birth = incoming[scenario.new_birth["message_id"]]
    assert (birth["status"], birth["due_at"]) == ("received", datetime(2026, 6, 17, 16, 0, tzinfo=UTC))
    acknowledged = [
        row for row in tables["notification"] if row["direction"] == "outgoing" and row["acknowledged_at"]
    ]
    assert len(acknowledged) == 3  # one before the batch, two in it
    cases = {row["request_message_id"]: row for row in tables["verification_case"]}
    received = [row for row in cases.values() if row["direction"] == "incoming"]
    assert len(received) == 2 + 6  # the two stored before, six new ones
    new = cases[scenario.new_request["message_id"]]
    assert (new["status"], new["received_at"], new["subject_id_number"]) == (
        "received",
        NOW.replace(microsecond=0),
        SUBJECT["id_number"],
    )
    assert new["subject_id_number_index"] == pii.blind_index(SUBJECT["id_number"], pii.ID_NUMBER)
    assert len({row["due_at"] for row in received}) >= 3  # normal, urgent, discrepancy
    by_status = Counter(row["status"] for row in cases.values() if row["direction"] == "outgoing")
    assert by_status == {"answered": 5, "queued": 1}  # rstranger untouched
    assert [call[3] for call in scenario.heard_item] == [
        "confirmed",
        "not_confirmed",
        "partially_confirmed",
        "confirmed",
    ]


def test_a_bulk_handler_that_fails_is_undone_and_the_run_taken_item_by_item(
    new_database: Callable[[], Engine], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: Session, inbounds: Any) -> Any:
        # Writes, then fails: all of it undone.
        session.connection().execute(
            insert(SeenNonce.__table__),  # type: ignore[attr-defined]
            [{"keyid": f"{ASKER}/k1", "nonce": str(i), "expires_at": NOW} for i in range(len(inbounds))],
        )
        raise KeyError(inbounds[0].envelope.payload.subject.id_number)  # a bug that quotes the data

    bulk = {**BULK, "notification": replace(BULK["notification"], handle_many=broken)}
    with caplog.at_level(logging.ERROR, logger="service.exchange.inbox"):
        scenario, by_bulk, by_item, one, other = run_both(new_database, monkeypatch, bulk)
    assert [status for _, status, _ in by_bulk] == scenario.expected
    assert by_bulk == by_item
    assert contents(one) == contents(other)
    failed = [r.getMessage() for r in caplog.records if "batch bulk handler failed" in r.getMessage()]
    assert failed
    assert all("type=notification" in m and "KeyError" in m for m in failed)
    assert not any(SUBJECT["id_number"] in m for m in failed)  # the frames, never the message


# --- the item checks' shortcut -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('{"a":"\\u0000"}', True),  # NUL, escaped
        ('{"\\u0000":1}', True),  # in a key
        ('{"a":[{"b":["\\ud800"]}]}', True),  # a lone surrogate, deep down
        ('{"a":"\\uD800\\u0041"}', True),  # upper-case hex, not followed by its low half
        ('{"a":"\x00"}', True),  # a raw NUL: not JSON
        ('{"a":"\\\\u0000"}', False),  # an escaped backslash, then the text "u0000"
        ('{"a":"\\ud83d\\ude00"}', False),  # a surrogate pair: one character
        ('{"a":"王\\u738b","b":[1,2.5,null,true]}', False),
    ],
)
def test_what_no_database_stores_is_refused_with_or_without_escapes(text: str, refused: bool) -> None:
    body = text.encode("utf-8")
    if refused:
        with pytest.raises(InvalidMessage):
            load_json(body)
    else:
        assert load_json(body) == json.loads(text)
