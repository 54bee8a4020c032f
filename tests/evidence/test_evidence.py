"""The evidence log: sealing, verifying, and each kind of tampering caught at the right entry."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlmodel import Session

from service.evidence import chain
from service.evidence.seal import purge_bodies, seal
from service.evidence.verify import Report, verify_database
from service.models import InboxMessage
from tests.evidence.conftest import Log


def verify(log: Log, **options: object) -> Report:
    return verify_database(log.engine, **options)  # type: ignore[arg-type]


def broken(report: Report) -> tuple[int | None, str]:
    assert not report.ok
    first = report.first_broken
    return first, " | ".join(str(p) for p in report.problems if p.seq == first)


def test_a_clean_log_verifies_every_signature_and_checkpoint(sealed: Log) -> None:
    report = verify(sealed)
    assert report.ok, report.problems
    assert (report.entries, report.first_seq, report.last_seq) == (6, 1, 6)
    # 3 received requests, 2 sent requests and their 2 receipts, 1 look-up answer.
    assert report.signatures == 8
    assert (report.checkpoints, report.bodies, report.purged) == (1, 6, 0)
    assert not report.notes


def test_sealing_again_appends_nothing_and_new_messages_extend_the_chain(sealed: Log) -> None:
    assert sealed.seal() == 0
    sealed.receive()
    sealed.send()
    assert sealed.seal() == 2
    assert sealed.seq_of(sealed.outbox[-1]) == 8
    report = verify(sealed)
    assert report.ok, report.problems
    assert report.entries == 8


def test_sealing_in_small_chunks_gives_the_same_chain(evidence_db: Log) -> None:
    for _ in range(5):
        evidence_db.receive()
    assert evidence_db.seal(chunk=2) == 5
    assert [evidence_db.seq_of(m) for m in evidence_db.inbox] == [1, 2, 3, 4, 5]
    assert verify(evidence_db).ok


def test_an_altered_body_is_named(sealed: Log) -> None:
    target = sealed.inbox[1]
    with Session(sealed.engine) as session:  # written as the node writes it (encrypted, with the key)
        row = session.get(InboxMessage, target)
        assert row is not None
        row.body = row.body.replace(b'"n": 1', b'"n": 7')
        session.commit()
    first, what = broken(verify(sealed))
    assert first == sealed.seq_of(target)
    assert "the message body does not match its sealed digest" in what


def test_a_body_altered_before_it_was_sealed_is_named(evidence_db: Log) -> None:
    """The sealer seals the digest taken when the message was stored (it reads no body), so a body
    changed between receipt and sealing does not become the evidence."""
    target = evidence_db.receive()
    with Session(evidence_db.engine) as session:
        row = session.get(InboxMessage, target)
        assert row is not None
        row.body = row.body.replace(b'"n": 0', b'"n": 7')
        session.commit()
    assert evidence_db.seal() == 1
    first, what = broken(verify(evidence_db))
    assert first == evidence_db.seq_of(target)
    assert "the message body does not match its sealed digest" in what


def test_a_body_overwritten_behind_the_nodes_back_is_named(sealed: Log) -> None:
    target = sealed.outbox[0]
    sealed.sql("UPDATE outbox_message SET body = :b WHERE message_id = :m", b=b"{}", m=target)
    first, what = broken(verify(sealed))
    assert (first, "cannot be read" in what) == (sealed.seq_of(target), True)


def test_an_altered_digest_is_named(sealed: Log) -> None:
    seq = sealed.seq_of(sealed.outbox[0])
    sealed.sql(
        "UPDATE evidence_entry SET body_digest = :d WHERE seq = :s", d=chain.content_digest(b"{}"), s=seq
    )
    first, what = broken(verify(sealed))
    assert (first, "entry_hash does not match" in what) == (seq, True)


def test_an_altered_digest_with_the_chain_rehashed_is_caught_by_signature_and_checkpoint(sealed: Log) -> None:
    seq = sealed.seq_of(sealed.inbox[0])
    sealed.sql(
        "UPDATE evidence_entry SET body_digest = :d WHERE seq = :s", d=chain.content_digest(b"{}"), s=seq
    )
    sealed.rechain()
    report = verify(sealed)
    first, what = broken(report)
    assert first == seq
    assert "signed digest is not the body's digest" in what
    assert any("not the one signed" in p.what for p in report.problems)  # the checkpoint at the head


def test_swapped_order_is_named(sealed: Log) -> None:
    sealed.sql("UPDATE evidence_entry SET seq = 100 WHERE seq = 3")
    sealed.sql("UPDATE evidence_entry SET seq = 3 WHERE seq = 4")
    sealed.sql("UPDATE evidence_entry SET seq = 4 WHERE seq = 100")
    first, what = broken(verify(sealed))
    assert first == 3
    assert "altered" in what or "order" in what


def test_a_deleted_entry_is_named(sealed: Log) -> None:
    sealed.sql("DELETE FROM evidence_entry WHERE seq = 4")
    first, what = broken(verify(sealed))
    assert first == 4
    assert "entry 4 is missing" in what


def test_deleted_last_entries_are_caught_by_the_head_and_the_checkpoint(sealed: Log) -> None:
    sealed.sql("DELETE FROM evidence_entry WHERE seq >= 5")
    sealed.sql(
        "UPDATE evidence_head SET seq = 4, head_hash = (SELECT entry_hash FROM evidence_entry WHERE seq = 4)"
    )
    report = verify(sealed)
    first, what = broken(report)
    assert first == 5
    assert "chain ends at entry 4: entries deleted" in what


def test_a_forged_signature_in_the_chain_is_named(sealed: Log) -> None:
    seq = sealed.seq_of(sealed.inbox[2])
    with sealed.engine.connect() as conn:
        signature_input = conn.execute(
            text("SELECT request_signature_input FROM evidence_entry WHERE seq = :s"), {"s": seq}
        ).scalar_one()
    forger = Ed25519PrivateKey.generate()
    fake = "yp=:" + base64.b64encode(forger.sign(b"something else")).decode() + ":"
    sealed.sql("UPDATE evidence_entry SET request_signature = :f WHERE seq = :s", f=fake, s=seq)
    sealed.rechain()
    first, what = broken(verify(sealed))
    assert first == seq
    assert "request: the signature does not verify" in what
    assert signature_input  # the entry kept what it needs to be checked again


def test_a_forged_signature_in_the_message_row_is_named(sealed: Log) -> None:
    target = sealed.inbox[0]
    fake = "yp=:" + base64.b64encode(Ed25519PrivateKey.generate().sign(b"x")).decode() + ":"
    sealed.sql("UPDATE inbox_message SET signature = :f WHERE message_id = :m", f=fake, m=target)
    first, what = broken(verify(sealed))
    assert first == sealed.seq_of(target)
    assert "message row's request signature is not the one sealed" in what


def test_a_forged_receipt_is_named(sealed: Log) -> None:
    target = sealed.outbox[1]
    fake = "yp=:" + base64.b64encode(Ed25519PrivateKey.generate().sign(b"x")).decode() + ":"
    seq = sealed.seq_of(target)
    sealed.sql("UPDATE evidence_entry SET answer_signature = :f WHERE seq = :s", f=fake, s=seq)
    sealed.rechain()
    first, what = broken(verify(sealed))
    assert (first, "receipt: the signature does not verify" in what) == (seq, True)


def test_a_key_outside_its_validity_is_refused(sealed: Log) -> None:
    # The directory now says the peer's key ended before its messages were signed.
    sealed.sql("UPDATE peer_key SET not_after = :t", t=sealed.now - timedelta(days=1))
    first, what = broken(verify(sealed))
    assert first == 1
    assert "after key 411627/k1 had expired" in what


def test_a_forged_checkpoint_is_named(sealed: Log) -> None:
    sealed.sql("UPDATE evidence_checkpoint SET head_hash = :h", h="ab" * 32)
    first, what = broken(verify(sealed))
    assert (first, "checkpoint" in what, "does not verify" in what) == (6, True, True)


def test_purged_bodies_are_reported_as_purged_not_broken(sealed: Log) -> None:
    later = sealed.now + timedelta(days=31)
    assert purge_bodies(sealed.engine, retention_days=30, now=later, chunk=2) == 6
    assert purge_bodies(sealed.engine, retention_days=30, now=later) == 0
    report = verify(sealed, purge_before=later - timedelta(days=30))
    assert report.ok, report.problems
    assert (report.purged, report.bodies, report.signatures) == (6, 0, 8)


def test_nothing_unsealed_is_purged(evidence_db: Log) -> None:
    evidence_db.receive()
    assert purge_bodies(evidence_db.engine, retention_days=1, now=evidence_db.now + timedelta(days=5)) == 0


def test_a_body_emptied_before_its_retention_ended_is_broken(sealed: Log) -> None:
    target = sealed.inbox[1]
    sealed.sql("UPDATE inbox_message SET body = :b WHERE message_id = :m", b=b"", m=target)
    first, what = broken(verify(sealed, purge_before=sealed.now - timedelta(days=30)))
    assert (first, "before its retention period ended" in what) == (sealed.seq_of(target), True)


@pytest.mark.postgres
def test_concurrent_sealers_take_turns(evidence_db: Log) -> None:
    for _ in range(30):
        evidence_db.receive()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            seal(evidence_db.engine, chunk=3, now=evidence_db.now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = verify(evidence_db)
    assert report.ok, report.problems
    assert report.entries == 30
