"""A message received in a batch is evidence of who sent it: the batch's body is kept (once, with
its accepted items), and verify shows the sender signed that body and the message is one of its
items (docs/protocol.md section 18, docs/security/evidence.md)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from service.clock import utcnow
from service.evidence import chain
from service.evidence.seal import BATCH_PATH, purge_bodies
from service.evidence.verify import Report, export_bundle, verify_bundle, verify_database
from service.models import EvidenceBatchBody
from tests.evidence.conftest import PEER, Log, batch_item

OFFLINE = Path(__file__).with_name("offline_check.py")


def verify(log: Log, **options: object) -> Report:
    return verify_database(log.engine, **options)  # type: ignore[arg-type]


def broken(report: Report) -> tuple[int | None, str]:
    assert not report.ok
    first = report.first_broken
    return first, " | ".join(str(p) for p in report.problems if p.seq == first)


def offline(bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(OFFLINE), str(bundle)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def batched(evidence_db: Log) -> Log:
    """One message alone, two in a batch (with a third item refused), one alone; sealed, signed."""
    log = evidence_db
    log.receive()
    log.batch = log.receive_batch(2)  # type: ignore[attr-defined]
    log.receive()
    assert log.seal() == 4
    log.checkpoint()
    return log


def batch_seqs(log: Log) -> list[int]:
    return sorted(log.seq_of(m) for m in log.inbox[1:3])


def kept_row(log: Log) -> EvidenceBatchBody:
    with Session(log.engine) as session:
        (row,) = session.exec(select(EvidenceBatchBody)).all()
        return row


def rewrite_batch(log: Log, body: bytes) -> None:
    """Write another batch body as the node writes it (encrypted with its key)."""
    with Session(log.engine) as session:
        (row,) = session.exec(select(EvidenceBatchBody)).all()
        row.body = body
        session.add(row)
        session.commit()


def test_a_batch_received_is_sealed_and_verifies(batched: Log) -> None:
    report = verify(batched)
    assert report.ok, report.problems
    assert not report.notes
    # Both singles and both batch items: their senders' signatures, the batch's over its body.
    assert (report.entries, report.signatures, report.bodies, report.batches) == (4, 4, 4, 2)
    body = batched.batch  # type: ignore[attr-defined]
    row = kept_row(batched)  # once per batch, not per item; the refused item changes nothing
    assert (row.body, row.digest, row.keyid) == (body, chain.content_digest(body), f"{PEER}/k1")
    with batched.engine.connect() as conn:
        entries = conn.execute(
            text("SELECT seq, request_path, request_digest FROM evidence_entry ORDER BY seq")
        ).all()
        raw = conn.execute(text("SELECT body FROM evidence_batch_body")).scalar_one()
    by_seq = {seq: (path, digest) for seq, path, digest in entries}
    for seq in batch_seqs(batched):
        assert by_seq[seq] == (BATCH_PATH, chain.content_digest(body))
    assert b"items" not in bytes(raw)  # encrypted at rest
    assert "王秀英".encode() not in bytes(raw)


def test_a_batch_with_no_item_accepted_keeps_no_body(batched: Log) -> None:
    # The same batch again (signed anew): its items are duplicates or refused, nothing is stored.
    assert batched.take_batch(batched.batch) == [200, 403, 200]  # type: ignore[attr-defined]
    with batched.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM evidence_batch_body")).scalar_one() == 1


def test_one_byte_changed_in_the_kept_batch_is_named(batched: Log) -> None:
    body = batched.batch  # type: ignore[attr-defined]
    at = body.index(b"marital_status")
    rewrite_batch(batched, body[:at] + b"M" + body[at + 1 :])
    first, what = broken(verify(batched))
    assert first == batch_seqs(batched)[0]
    assert "does not match the digest its sender signed" in what
    assert {p.seq for p in verify(batched).problems} == set(batch_seqs(batched))


def test_a_batch_without_the_message_put_in_its_place_is_named(batched: Log) -> None:
    body = json.loads(batched.batch)  # type: ignore[attr-defined]
    target = batched.inbox[2]
    others = [item for item in body["items"] if target not in item]
    rewrite_batch(batched, json.dumps({"items": others}).encode())
    with batched.engine.begin() as conn:  # and its digest column to match: the entry still says
        conn.execute(
            text("UPDATE evidence_batch_body SET digest = :d"),
            {"d": chain.content_digest(json.dumps({"items": others}).encode())},
        )
    first, what = broken(verify(batched))
    assert first == batch_seqs(batched)[0]
    assert "does not match the digest its sender signed" in what


def test_a_message_moved_into_another_batch_is_named(evidence_db: Log) -> None:
    # Two batches from the peer; an intruder re-attributes a message of the first to the second
    # (that batch's real signature and digest in its entry, the chain re-hashed): the signature
    # verifies, the kept body is the one signed, but the message is not one of its items.
    log = evidence_db
    log.receive_batch(2)
    log.receive_batch(2)
    assert log.seal() == 4
    moved, other = log.seq_of(log.inbox[0]), log.seq_of(log.inbox[2])
    fields = "request_signature_input, request_signature, request_digest"
    with log.engine.begin() as conn:
        values = conn.execute(text(f"SELECT {fields} FROM evidence_entry WHERE seq = :s"), {"s": other}).one()
        conn.execute(
            text(
                "UPDATE evidence_entry SET request_signature_input = :i, request_signature = :g,"
                " request_digest = :d WHERE seq = :s"
            ),
            {"i": values[0], "g": values[1], "d": values[2], "s": moved},
        )
    log.rechain()
    report = verify(log)
    first, what = broken(report)
    assert first == moved
    assert "the kept batch body does not hold this message" in what
    assert report.signatures == 4  # the moved entry's signature is a good one: only the body shows it


def test_a_deleted_batch_body_is_named(batched: Log) -> None:
    batched.sql("DELETE FROM evidence_batch_body")
    first, what = broken(verify(batched))
    assert first == batch_seqs(batched)[0]
    assert "the body of the batch that brought it is missing (deleted)" in what


def test_a_batch_body_overwritten_behind_the_nodes_back_is_named(batched: Log) -> None:
    batched.sql("UPDATE evidence_batch_body SET body = :b", b=b'{"items":[]}')
    first, what = broken(verify(batched))
    assert (first, "cannot be read" in what) == (batch_seqs(batched)[0], True)


def test_batch_bodies_are_purged_with_their_items(batched: Log) -> None:
    later = batched.now + timedelta(days=31)
    assert purge_bodies(batched.engine, retention_days=30, now=later) == 5  # 4 messages, 1 batch
    assert kept_row(batched).body == b""
    report = verify(batched, purge_before=later - timedelta(days=30))
    assert report.ok, report.problems
    assert (report.purged, report.bodies, report.batches, report.signatures) == (5, 0, 0, 4)


def test_a_batch_body_waits_for_an_unsealed_item(evidence_db: Log) -> None:
    evidence_db.receive_batch(2)
    assert purge_bodies(evidence_db.engine, retention_days=1, now=evidence_db.now + timedelta(days=5)) == 0
    assert kept_row(evidence_db).body != b""


def test_a_batch_body_emptied_before_its_retention_ended_is_broken(batched: Log) -> None:
    rewrite_batch(batched, b"")
    first, what = broken(verify(batched, purge_before=batched.now - timedelta(days=30)))
    assert first == batch_seqs(batched)[0]
    assert "the batch body was emptied before its retention period ended" in what


def test_a_batch_received_before_bodies_were_kept_still_verifies_with_a_note(evidence_db: Log) -> None:
    # What a chain sealed before migration 0017 holds: no batch body, so no digest in the entry.
    evidence_db.receive_batch(2)
    evidence_db.sql("DELETE FROM evidence_batch_body")
    assert evidence_db.seal() == 2
    report = verify(evidence_db)
    assert report.ok, report.problems
    assert (report.signatures, report.batches) == (0, 0)
    assert [n.what for n in report.notes] == [
        "request signed as part of a batch whose body is not kept: its signature not checked"
    ] * 2


def test_an_item_of_another_batch_is_not_taken_for_this_one() -> None:
    # The item's bytes as the batch's JSON string decodes to them, escapes or not.
    item = batch_item("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10", utcnow())
    escaped, raw = json.dumps({"items": [item]}).encode(), json.dumps({"items": [item]}, ensure_ascii=False)
    assert chain.batch_items(escaped) == chain.batch_items(raw.encode()) == [item.encode()]
    with pytest.raises(ValueError, match="not a batch"):
        chain.batch_items(b'["not", "a", "batch"]')


def export(log: Log, out: Path, *, bodies: bool = True) -> dict[str, int]:
    return export_bundle(
        log.engine,
        out,
        start=log.now - timedelta(days=1),
        end=log.now + timedelta(days=1),
        include_bodies=bodies,
        now=log.now,
    )


def test_the_export_carries_the_batch_and_verifies_offline(batched: Log, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    summary = export(batched, out)
    assert (summary["entries"], summary["bodies"], summary["batches"]) == (4, 4, 1)
    bundle = json.loads(out.read_text(encoding="utf-8"))
    body = batched.batch  # type: ignore[attr-defined]
    assert bundle["batches"] == {chain.content_digest(body): base64.b64encode(body).decode()}
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert (report.signatures, report.bodies, report.batches) == (4, 4, 2)
    run = offline(out)
    assert run.returncode == 0, run.stdout + run.stderr


def test_without_bodies_the_bundle_carries_no_batch(batched: Log, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    assert export(batched, out, bodies=False)["batches"] == 0
    text_ = out.read_text(encoding="utf-8")
    assert json.loads(text_)["batches"] == {}
    assert "王秀英" not in text_
    assert "411627199503080024" not in text_
    report = verify_bundle(out)
    assert (report.ok, report.signatures, report.batches) == (True, 4, 0)  # signed, membership not shown
    assert offline(out).returncode == 0


@pytest.mark.parametrize("change", ["byte", "without the message", "another body for the message"])
def test_a_changed_batch_in_the_bundle_is_named_by_both_verifiers(
    batched: Log, tmp_path: Path, change: str
) -> None:
    out = tmp_path / "bundle.json"
    export(batched, out)
    bundle = json.loads(out.read_text(encoding="utf-8"))
    seqs = batch_seqs(batched)
    (digest,) = bundle["batches"]
    body = base64.b64decode(bundle["batches"][digest])
    named = seqs[0]
    if change == "byte":
        at = body.index(b"marital_status")
        body = body[:at] + b"M" + body[at + 1 :]
    elif change == "without the message":
        items = json.loads(body)["items"]
        body = json.dumps({"items": [i for i in items if batched.inbox[1] not in i]}).encode()
    else:  # the message's body in the bundle replaced by another item of the same batch
        items = [i.encode() for i in json.loads(body)["items"]]
        bundle["bodies"][str(seqs[1])] = base64.b64encode(items[1]).decode()  # the refused one
        named = seqs[1]
    bundle["batches"][digest] = base64.b64encode(body).decode()
    out.write_text(json.dumps(bundle), encoding="utf-8")
    report = verify_bundle(out)
    assert report.first_broken == named, report.problems
    run = offline(out)
    assert run.returncode == 1
    assert f"entry {named}:" in run.stdout


def test_the_items_of_one_batch_cost_the_sealer_one_signature_check(
    evidence_db: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sealer tells a batch's items by their shared signature: one Ed25519 verification for
    the batch, not two an item (over the item's body, then over the batch's)."""
    evidence_db.receive_batch(5)  # type: ignore[attr-defined]
    checks = []
    real = chain.verifies
    monkeypatch.setattr(chain, "verifies", lambda *a: checks.append(a) or real(*a))
    assert evidence_db.seal() == 5
    assert len(checks) == 1
    report = verify(evidence_db)
    assert report.ok, report.problems
    assert report.batches == 5
