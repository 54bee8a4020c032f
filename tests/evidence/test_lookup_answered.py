"""Look-ups this node answered as origin (``POST /peer/v1/certificate-lookups``) are in the evidence
log: the asker's request signature and this node's answer bound to it are sealed (digests only, no
ID number), verify and export re-check both, and each kind of tampering is named at its entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session

from service.errors import Conflict
from service.evidence import chain
from service.evidence.seal import ANSWER_SETTLE, ANSWERED
from service.evidence.verify import Report, entry_json, verify_bundle, verify_database
from service.models import EvidenceEntry
from tests.certificates.factories import id_number
from tests.evidence.conftest import BORN, HERE, LOOKUPS, PEER, PEER_KEYID, Log
from tests.evidence.test_bundle import export, offline

STRANGER = "310110"  # not her host: the peer has no standing, the look-up is refused (403)


def verify(log: Log) -> Report:
    return verify_database(log.engine)


def seq_of(log: Log, lookup_id: str) -> int:
    with log.engine.connect() as conn:
        seq = conn.execute(
            text("SELECT seq FROM evidence_entry WHERE kind = :k AND source_id = :s"),
            {"k": ANSWERED, "s": lookup_id},
        ).scalar_one()
    return int(seq)


def entry(log: Log, seq: int) -> dict[str, object]:
    with Session(log.engine) as session:
        row = session.get(EvidenceEntry, seq)
        assert row is not None
        return entry_json(row)


def flip(signature: str) -> str:
    return signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]


def problems_at(report: Report, seq: int) -> str:
    assert not report.ok
    assert report.first_broken == seq, report.problems
    return " | ".join(str(p) for p in report.problems if p.seq == seq)


@pytest.fixture
def answered(sealed: Log) -> Log:
    """The six messages of ``sealed``, then two look-ups the peer made here: one answered (she is
    registered with the peer as her host), one refused (no standing); sealed and signed."""
    sealed.asked(serial=1)
    sealed.asked(serial=2, host=STRANGER)
    assert sealed.seal() == 2
    sealed.checkpoint()
    return sealed


def test_a_lookup_answered_as_origin_is_sealed_with_both_signatures_and_verifies(answered: Log) -> None:
    report = verify(answered)
    assert report.ok, report.problems
    assert report.entries == 8
    assert report.signatures == 8 + 4  # each look-up: the peer's request and this node's answer
    assert not report.notes
    found, refused = (entry(answered, seq_of(answered, i)) for i in answered.answered)
    assert (found["kind"], found["peer"], found["message_type"]) == (ANSWERED, PEER, "certificate.lookup")
    assert (found["request_keyid"], found["answer_keyid"]) == (PEER_KEYID, answered.signer.keyid)
    assert found["request_path"] == LOOKUPS
    assert found["body_digest"] == found["request_digest"]  # the body itself is not kept
    assert (found["answer_status"], found["answer_content_type"]) == (200, "application/json")
    assert chain.answer_is_bound(str(found["answer_signature_input"]))
    assert (refused["answer_status"], refused["answer_content_type"]) == (403, "application/problem+json")
    for sealed_entry in (found, refused):  # no personal data in the entries
        dumped = json.dumps(sealed_entry, ensure_ascii=False)
        assert "王秀英" not in dumped
        assert id_number(HERE, BORN, 1) not in dumped
        assert id_number(HERE, BORN, 2) not in dumped


def test_an_answer_whose_signature_was_not_kept_is_sealed_after_a_while_with_a_note(
    evidence_db: Log,
) -> None:
    log = evidence_db
    lookup = log.asked(keep_answer_signature=False)
    assert log.seal() == 0  # its answer's signature may still be on its way
    log.now += ANSWER_SETTLE
    assert log.seal() == 1
    report = verify(log)
    assert report.ok, report.problems
    assert report.signatures == 1  # the peer's request
    assert [str(n) for n in report.notes] == [
        f"entry {seq_of(log, lookup)}: the answer's signature was not kept (its status and digest are sealed)"
    ]


def test_a_lookup_asked_again_is_refused_and_stores_nothing_more(evidence_db: Log) -> None:
    log = evidence_db
    first = log.asked()
    with log.engine.connect() as conn:
        asked_id = conn.execute(text("SELECT message_id FROM lookup_log")).scalar_one()
    with pytest.raises(Conflict):  # the same message_id, a new request (new nonce, new signature)
        log.asked(message_id=asked_id)
    with log.engine.connect() as conn:
        counts = [
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("lookup_log", "evidence_sent_answer", "seen_nonce")
        ]
    assert counts == [1, 1, 1]  # the refused request left not even its nonce
    assert log.seal() == 1
    assert verify(log).ok
    assert log.answered == [first]


def test_lookups_logged_without_a_request_signature_are_not_sealed(evidence_db: Log) -> None:
    # Rows from before migration 0016 (or written outside the peer route) keep no signature.
    log = evidence_db
    log.asked()
    log.sql("UPDATE lookup_log SET request_signature = NULL")
    log.now += ANSWER_SETTLE
    assert log.seal(full=True) == 0


def test_a_forged_request_signature_in_the_chain_is_named(answered: Log) -> None:
    seq = seq_of(answered, answered.answered[0])
    forged = flip(str(entry(answered, seq)["request_signature"]))
    answered.sql("UPDATE evidence_entry SET request_signature = :f WHERE seq = :s", f=forged, s=seq)
    assert "entry_hash does not match" in problems_at(verify(answered), seq)
    answered.rechain()
    what = problems_at(verify(answered), seq)
    assert "request: the signature does not verify" in what
    # The answer is bound to the request's signature: it no longer verifies either.
    assert "answer: the signature does not verify" in what


def test_an_altered_answer_digest_is_named(answered: Log) -> None:
    seq = seq_of(answered, answered.answered[1])
    answered.sql(
        "UPDATE evidence_entry SET answer_digest = :d WHERE seq = :s", d=chain.content_digest(b"{}"), s=seq
    )
    assert "entry_hash does not match" in problems_at(verify(answered), seq)
    answered.rechain()
    what = problems_at(verify(answered), seq)
    assert "answer: the signature does not verify" in what
    assert "answer_digest is not the one sealed" in what  # the look-up log still has the true one


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        (
            "UPDATE lookup_log SET request_signature = :f WHERE id = :i",
            "request signature is not the one sealed",
        ),
        ("UPDATE lookup_log SET request_digest = :d WHERE id = :i", "request_digest is not the one sealed"),
        ("UPDATE lookup_log SET answer_status = 200 WHERE id = :i", "answer_status is not the one sealed"),
        (
            "UPDATE evidence_sent_answer SET signature = :f"
            " WHERE message_id = (SELECT message_id FROM lookup_log WHERE id = :i)",
            "answer signature is not the one sealed",
        ),
    ],
)
def test_a_changed_lookup_row_is_named(answered: Log, statement: str, named: str) -> None:
    lookup = answered.answered[1]
    seq = seq_of(answered, lookup)
    sealed = entry(answered, seq)
    forged = {"request_signature": flip(str(sealed["request_signature"]))}
    if "evidence_sent_answer" in statement:
        forged = {"answer_signature": flip(str(sealed["answer_signature"]))}
    params: dict[str, object] = {"i": int(lookup)}
    if ":f" in statement:
        params["f"] = next(iter(forged.values()))
    if ":d" in statement:
        params["d"] = chain.content_digest(b"{}")
    assert answered.sql(statement, **params) == 1
    assert named in problems_at(verify(answered), seq)


def test_a_deleted_lookup_entry_is_named(answered: Log) -> None:
    seq = seq_of(answered, answered.answered[0])
    answered.sql("DELETE FROM evidence_entry WHERE seq = :s", s=seq)
    assert f"entry {seq} is missing" in problems_at(verify(answered), seq)


def test_the_lookups_answered_are_exported_and_verify_offline(answered: Log, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    assert export(answered, out, bodies=True)["entries"] == 8
    bundle_text = out.read_text(encoding="utf-8")
    assert id_number(HERE, BORN, 1) not in bundle_text  # neither the request nor the answer body
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.signatures == 12
    run = offline(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "8 entries, 2 checkpoints: OK" in run.stdout

    # The peer's request signature changed in the bundle, the chain recomputed after it.
    bundle = json.loads(bundle_text)
    seq = seq_of(answered, answered.answered[0])
    entries = sorted(bundle["entries"], key=lambda e: e["seq"])
    entries[seq - 1]["request_signature"] = flip(entries[seq - 1]["request_signature"])
    prev = chain.GENESIS
    for e in entries:
        e["prev_hash"] = prev
        prev = e["entry_hash"] = chain.entry_hash(e)
    out.write_text(json.dumps(bundle), encoding="utf-8")
    report = verify_bundle(out)
    assert report.first_broken == seq, report.problems
    run = offline(out)
    assert run.returncode == 1
    assert f"entry {seq}: request signature" in run.stdout
    assert f"entry {seq}: answer signature" in run.stdout


def test_an_answer_signed_by_another_node_is_named(answered: Log) -> None:
    # The answer of a look-up answered here must be this node's; the request the asker's.
    seq = seq_of(answered, answered.answered[0])
    answered.sql("UPDATE evidence_entry SET peer = :p WHERE seq = :s", p=HERE, s=seq)
    answered.rechain()
    what = problems_at(verify(answered), seq)
    assert f"the request is signed by another node than {HERE}" in what
