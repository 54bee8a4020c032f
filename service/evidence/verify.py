"""Checking the evidence log again: the chain (hashes, sequence, deletions), every stored signature
against the key valid when it was made, each still-present body against its digest, the signed
checkpoints; from this node's database or offline from an exported bundle (``export``).

One ``Verifier`` does both: entries are fed to it in sequence order with what is known of their
bodies, then the checkpoints; its ``Report`` names the first broken entry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.evidence import chain
from service.evidence.seal import ANSWERED, BATCH_PATH, INBOX, LOOKUP, OUTBOX, _canonical_signature, _nonce
from service.models import (
    CertificateCheck,
    EvidenceBatchBody,
    EvidenceCheckpoint,
    EvidenceEntry,
    EvidenceHead,
    EvidenceSentAnswer,
    InboxMessage,
    LocalNode,
    LookupLog,
    NodeKey,
    OutboxMessage,
    PeerKey,
)

BUNDLE_FORMAT = "yipanqi-evidence-bundle/1"
CHUNK = 1000
NOT_KEPT = object()  # a body that is not at hand (not in the bundle, or its row is gone)
MISSING = object()  # a kept batch body that should be in the database and is not (deleted)


@dataclass(frozen=True)
class KeyInfo:
    keyid: str
    public_key: str
    not_before: datetime | None
    not_after: datetime | None
    source: str  # "node", "directory", or "sealed" (known only from the entries that used it)

    def as_json(self) -> dict[str, Any]:
        return {
            "keyid": self.keyid,
            "public_key": self.public_key,
            "not_before": chain.timestamp(self.not_before) if self.not_before else None,
            "not_after": chain.timestamp(self.not_after) if self.not_after else None,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyInfo:
        nb, na = data.get("not_before"), data.get("not_after")
        return cls(
            str(data["keyid"]),
            str(data["public_key"]),
            chain.parse_timestamp(nb) if nb else None,
            chain.parse_timestamp(na) if na else None,
            str(data.get("source", "directory")),
        )


@dataclass(frozen=True)
class Finding:
    seq: int | None
    what: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.what}" if self.seq is not None else self.what


@dataclass
class Report:
    entries: int = 0
    signatures: int = 0  # signatures that verified
    checkpoints: int = 0  # checkpoints that verified
    bodies: int = 0  # bodies that matched their digest
    purged: int = 0  # bodies emptied by the retention purge (batch bodies too, once each)
    batches: int = 0  # messages received in a batch shown to be in its kept, signed body
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_broken(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None


@dataclass
class Body:
    """What is known of an entry's message row: its body (b"" purged, NOT_KEPT not at hand), the
    answer's body (a receipt), and the row's signatures as stored now (to compare)."""

    body: Any = NOT_KEPT
    answer: bytes | None = None
    request_signature: tuple[str, str] | None = None
    answer_signature: tuple[str, str] | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # other values the row keeps, as sealed
    # The kept body of the batch that brought an inbox message (b"" purged, MISSING, UNREADABLE).
    batch: Any = NOT_KEPT


@dataclass(frozen=True)
class _Batch:
    """What a kept batch body shows, worked out once per batch."""

    body: bytes
    digest: str  # sha-256 Content-Digest of body
    items: frozenset[bytes] | None  # its items' bytes; None: not a batch
    item_digests: frozenset[str]


class Verifier:
    def __init__(
        self,
        keys: Mapping[str, KeyInfo],
        *,
        first_seq: int = 1,
        prev_hash: str = chain.GENESIS,
        skew: timedelta = timedelta(seconds=300),
        purge_before: datetime | None = None,
        node_id: str | None = None,
    ) -> None:
        """``first_seq``/``prev_hash``: where the entries start (a bundle may start mid-chain);
        ``purge_before``: bodies of messages from before this may be purged (retention), later not;
        ``node_id``: the node whose log it is (who signs the answers of look-ups it answered)."""
        self.keys = keys
        self.node_id = node_id
        self.skew = skew
        self.purge_before = purge_before
        self.report = Report()
        self._expect, self._prev = first_seq, prev_hash
        self._hashes: dict[int, str] = {}
        self._batches: dict[str, _Batch] = {}  # the last few batch bodies read, by signed digest
        self._purged_batches: set[str] = set()

    def problem(self, seq: int | None, what: str) -> None:
        self.report.problems.append(Finding(seq, what))

    def note(self, seq: int | None, what: str) -> None:
        self.report.notes.append(Finding(seq, what))

    # --- entries --------------------------------------------------------------------------------

    def feed(self, entry: Mapping[str, Any], known: Body | None = None) -> None:
        seq = int(entry["seq"])
        report = self.report
        report.entries += 1
        report.first_seq = seq if report.first_seq is None else report.first_seq
        if seq < self._expect:
            self.problem(seq, f"out of order: entry {seq} comes after entry {self._expect - 1}")
        elif seq > self._expect:
            missing = f"{self._expect}" if seq == self._expect + 1 else f"{self._expect}–{seq - 1}"
            self.problem(self._expect, f"entry {missing} is missing (deleted)")
        elif entry["prev_hash"] != self._prev:
            self.problem(
                seq, "prev_hash is not the hash of the entry before (order changed or an entry replaced)"
            )
        computed = chain.entry_hash(entry)
        if computed != entry["entry_hash"]:
            self.problem(seq, "entry_hash does not match the entry's content (the entry was altered)")
        self._hashes[seq] = str(entry["entry_hash"])
        self._expect, self._prev = seq + 1, str(entry["entry_hash"])
        report.last_seq = seq
        self._signatures(seq, entry)
        if known is not None:
            self._body(seq, entry, known)

    def _key(self, seq: int, keyid: str | None, recorded: str | None, created: datetime) -> str | None:
        if not keyid:
            self.problem(seq, "the signature names no key")
            return None
        info = self.keys.get(keyid)
        if info is None or info.source == "sealed":
            if recorded:
                self.note(
                    seq,
                    f"key {keyid} is no longer in the directory: checked with the key sealed in the entry",
                )
                return recorded
            self.problem(seq, f"key {keyid} is unknown")
            return None
        if recorded and recorded != info.public_key:
            self.problem(seq, f"the key sealed for {keyid} is not the one in the directory")
        if info.not_before is not None and created < info.not_before - self.skew:
            self.problem(seq, f"signed before key {keyid} was valid")
        if info.not_after is not None and created > info.not_after + self.skew:
            self.problem(seq, f"signed after key {keyid} had expired")
        return info.public_key

    def _check(
        self, seq: int, what: str, keyid: Any, recorded: Any, signature_input: str, signature: str, base: Any
    ) -> None:
        try:
            created = chain.created_of(signature_input)
            raw = chain.signature_bytes(signature)
            message = base()
        except ValueError as exc:
            if "not kept" in str(exc):
                self.note(seq, f"{what}: {exc}; not checked")
                return
            self.problem(seq, f"{what}: {exc}")
            return
        key = self._key(seq, keyid, recorded, created)
        if key is None:
            return
        if not chain.verifies(key, raw, message):
            self.problem(seq, f"{what}: the signature does not verify")
            return
        self.report.signatures += 1

    def _signatures(self, seq: int, e: Mapping[str, Any]) -> None:
        request = None
        if e["request_path"] and e["request_digest"] and e["request_signature"]:
            request = (str(e["request_path"]), str(e["request_digest"]), str(e["request_signature"]))
        if e["request_signature_input"] and e["request_signature"]:
            request_input, request_signature = str(e["request_signature_input"]), str(e["request_signature"])
            path, digest = e["request_path"], e["request_digest"]
            if path and digest:
                self._check(
                    seq,
                    "request",
                    e["request_keyid"],
                    e["request_public_key"],
                    request_input,
                    request_signature,
                    lambda: chain.request_base(str(path), str(digest), request_input),
                )
                if path != "/peer/v1/batch" and digest != e["body_digest"]:
                    self.problem(seq, "the request's signed digest is not the body's digest")
            else:
                self.note(
                    seq, "request signed as part of a batch whose body is not kept: its signature not checked"
                )
        elif e["kind"] != LOOKUP:
            self.note(seq, "no request signature kept (delivered before the evidence log)")
        if e["kind"] == ANSWERED:  # the peer asked, this node answered
            if e["request_keyid"] and not str(e["request_keyid"]).startswith(f"{e['peer']}/"):
                self.problem(seq, f"the request is signed by another node than {e['peer']}")
            if not (e["request_signature_input"] and e["request_signature"] and e["request_digest"]):
                self.problem(seq, "no request signature in the entry")
            if e["answer_status"] is None or not e["answer_digest"]:
                self.problem(seq, "no answer status and digest in the entry")
        signer = self.node_id if e["kind"] == ANSWERED else e["peer"]
        if e["answer_signature_input"] and e["answer_signature"]:
            answer_input, answer_signature = str(e["answer_signature_input"]), str(e["answer_signature"])
            status, content_type, digest = e["answer_status"], e["answer_content_type"], e["answer_digest"]
            self._check(
                seq,
                "answer" if e["kind"] in (LOOKUP, ANSWERED) else "receipt",
                e["answer_keyid"],
                e["answer_public_key"],
                answer_input,
                answer_signature,
                lambda: chain.answer_base(int(status), str(content_type), str(digest), answer_input, request),
            )
            if signer and e["answer_keyid"] and not str(e["answer_keyid"]).startswith(f"{signer}/"):
                self.problem(seq, f"the answer is signed by another node than {signer}")
        elif e["kind"] in (OUTBOX, LOOKUP):
            self.problem(seq, "no signed answer in the entry")
        elif e["kind"] == ANSWERED:
            self.note(seq, "the answer's signature was not kept (its status and digest are sealed)")

    def _body(self, seq: int, e: Mapping[str, Any], known: Body) -> None:
        body = known.body
        if body is NOT_KEPT:
            pass
        elif body is UNREADABLE:
            self.problem(
                seq, "the message row cannot be read (its stored body is not this node's ciphertext)"
            )
        elif body == b"":
            occurred = chain.parse_timestamp(str(e["occurred_at"]))
            if self.purge_before is not None and occurred >= self.purge_before:
                self.problem(seq, "the body was emptied before its retention period ended")
            else:
                self.report.purged += 1
        elif chain.content_digest(body) != e["body_digest"]:
            self.problem(seq, "the message body does not match its sealed digest (the body was altered)")
        else:
            self.report.bodies += 1
        if known.answer is not None and e["kind"] == OUTBOX:
            if chain.content_digest(known.answer) != e["answer_digest"]:
                self.problem(seq, "the receipt does not match its sealed digest")
            else:
                try:
                    receipt = json.loads(known.answer)
                except ValueError:
                    receipt = {}
                if receipt.get("message_id") != e["message_id"] or receipt.get("digest") != e["body_digest"]:
                    self.problem(seq, "the receipt is for another message or body")
        for what, stored, sealed in (
            ("request", known.request_signature, (e["request_signature_input"], e["request_signature"])),
            ("answer", known.answer_signature, (e["answer_signature_input"], e["answer_signature"])),
        ):
            if stored is not None and sealed[0] is not None and stored != sealed:
                self.problem(seq, f"the message row's {what} signature is not the one sealed")
        for name, stored_value in known.fields.items():
            if stored_value != e[name]:
                self.problem(seq, f"the message row's {name} is not the one sealed")
        if e["kind"] == INBOX and e["request_path"] == BATCH_PATH and e["request_digest"]:
            self._batch(seq, e, known)

    def _batch(self, seq: int, e: Mapping[str, Any], known: Body) -> None:
        """A message received in a batch: the batch body kept for its request must be the one the
        sender signed (its digest), and one of its items must be the message's body."""
        kept, signed = known.batch, str(e["request_digest"])
        if kept is NOT_KEPT:
            return
        if kept is MISSING:
            self.problem(seq, "the body of the batch that brought it is missing (deleted)")
            return
        if kept is UNREADABLE:
            self.problem(seq, "the kept batch body cannot be read (not this node's ciphertext)")
            return
        if kept == b"":
            occurred = chain.parse_timestamp(str(e["occurred_at"]))
            if self.purge_before is not None and occurred >= self.purge_before:
                self.problem(seq, "the batch body was emptied before its retention period ended")
            elif signed not in self._purged_batches:
                self._purged_batches.add(signed)
                self.report.purged += 1
            return
        batch = self._batches.get(signed)
        if batch is None or batch.body is not kept:
            batch = _read_batch(bytes(kept))
            if len(self._batches) >= 8:
                self._batches.clear()
            self._batches[signed] = batch
        if batch.digest != signed:
            self.problem(seq, "the kept batch body does not match the digest its sender signed (altered)")
        elif batch.items is None:
            self.problem(seq, 'the kept batch body is not a batch {"items": [...]}')
        elif e["body_digest"] not in batch.item_digests or (
            isinstance(known.body, bytes | bytearray) and known.body and bytes(known.body) not in batch.items
        ):
            self.problem(seq, "the kept batch body does not hold this message (no item is its body)")
        else:
            self.report.batches += 1

    # --- checkpoints and the head ---------------------------------------------------------------

    def checkpoints(self, rows: Sequence[Mapping[str, Any]], node_id: str | None) -> None:
        last = self.report.last_seq or 0
        for cp in rows:
            seq, head = int(cp["seq"]), str(cp["head_hash"])
            payload = chain.checkpoint_payload(
                node_id=str(cp["node_id"]),
                seq=seq,
                head_hash=head,
                signed_at=str(cp["signed_at"]),
                keyid=str(cp["keyid"]),
            )
            info = self.keys.get(str(cp["keyid"]))
            where = f"checkpoint of entry {seq} signed {cp['signed_at']}"
            if node_id is not None and cp["node_id"] != node_id:
                self.problem(seq, f"{where}: signed for node {cp['node_id']}, not {node_id}")
                continue
            if info is None or not str(cp["keyid"]).startswith(f"{cp['node_id']}/"):
                self.problem(seq, f"{where}: key {cp['keyid']} is not the node's")
                continue
            try:
                raw = base64.b64decode(str(cp["signature"]), validate=True)
            except ValueError:
                raw = b""
            if not chain.verifies(info.public_key, raw, payload):
                self.problem(seq, f"{where}: the signature does not verify")
                continue
            if seq > last:
                self.problem(last + 1, f"{where}, but the chain ends at entry {last}: entries deleted")
                continue
            if seq in self._hashes and self._hashes[seq] != head:
                self.problem(
                    seq, f"{where}: the entry's hash is not the one signed (the chain was rewritten)"
                )
                continue
            self.report.checkpoints += 1
        self.report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))

    def head(self, seq: int, head_hash: str) -> None:
        last = self.report.last_seq or 0
        if seq > last:
            self.problem(
                last + 1, f"the chain head says {seq} entries, the chain ends at {last}: entries deleted"
            )
        elif seq == last and head_hash != self._prev:
            self.problem(seq, "the chain head's hash is not the last entry's")


def _read_batch(body: bytes) -> _Batch:
    try:
        items: frozenset[bytes] | None = frozenset(chain.batch_items(body))
    except ValueError:
        items = None
    digests = frozenset(chain.content_digest(item) for item in items or ())
    return _Batch(body, chain.content_digest(body), items, digests)


# --- from the database -----------------------------------------------------------------------------


def entry_json(row: EvidenceEntry) -> dict[str, Any]:
    data: dict[str, Any] = {name: getattr(row, name) for name in (*chain.ENTRY_FIELDS, "entry_hash")}
    data["occurred_at"] = chain.timestamp(row.occurred_at)
    data["sealed_at"] = chain.timestamp(row.sealed_at)
    return data


def checkpoint_json(row: EvidenceCheckpoint) -> dict[str, Any]:
    return {
        "node_id": row.node_id,
        "seq": row.seq,
        "head_hash": row.head_hash,
        "signed_at": chain.timestamp(row.signed_at),
        "keyid": row.keyid,
        "signature": row.signature,
    }


def directory_keys(session: Session) -> dict[str, KeyInfo]:
    keys = {
        k.keyid: KeyInfo(k.keyid, k.public_key, k.not_before, k.not_after, "directory")
        for k in session.exec(select(PeerKey))
    }
    keys.update(
        {
            k.keyid: KeyInfo(k.keyid, k.public_key, k.not_before, k.not_after, "node")
            for k in session.exec(select(NodeKey))
        }
    )
    return keys


UNREADABLE = object()  # a body that cannot be read (not this node's ciphertext: written behind its back)


def _rows(session: Session, model: Any, key: Any, ids: Sequence[Any]) -> Iterator[Any]:
    """The rows of ``model`` with these keys; a row that cannot be read (its encrypted body was
    overwritten) comes as ``(UNREADABLE, key)``, the others as they are."""
    if not ids:
        return
    try:
        rows = list(session.exec(select(model).where(col(key).in_(ids))))
    except Exception:
        session.rollback()
        for one in ids:
            try:
                rows = list(session.exec(select(model).where(col(key) == one)))
            except Exception:
                session.rollback()
                yield UNREADABLE, one
                continue
            yield from rows
        return
    yield from rows


def _known(session: Session, entries: Sequence[Mapping[str, Any]]) -> dict[int, Body]:
    """The message rows of these entries as they are now."""
    by_source: dict[tuple[str, str], int] = {(e["kind"], e["source_id"]): e["seq"] for e in entries}
    known: dict[int, Body] = {e["seq"]: Body() for e in entries}
    inbox = [s for k, s in by_source if k == INBOX]
    for m in _rows(session, InboxMessage, InboxMessage.message_id, inbox):
        if isinstance(m, tuple):
            known[by_source[(INBOX, m[1])]] = Body(UNREADABLE)
            continue
        known[by_source[(INBOX, m.message_id)]] = Body(
            m.body, request_signature=_canonical_signature(m.signature_input, m.signature, response=False)
        )
    _batch_bodies(session, entries, known)
    outbox = [s for k, s in by_source if k == OUTBOX]
    for o in _rows(session, OutboxMessage, OutboxMessage.message_id, outbox):
        if isinstance(o, tuple):
            known[by_source[(OUTBOX, o[1])]] = Body(UNREADABLE)
            continue
        answer = None
        if o.receipt_signature_input and o.receipt_signature:
            answer = _canonical_signature(o.receipt_signature_input, o.receipt_signature, response=True)
        known[by_source[(OUTBOX, o.message_id)]] = Body(o.body, o.receipt_body, answer_signature=answer)
    checks = [int(s) for k, s in by_source if k == LOOKUP]
    for c in _rows(session, CertificateCheck, CertificateCheck.id, checks):
        if isinstance(c, tuple):
            known[by_source[(LOOKUP, str(c[1]))]] = Body(UNREADABLE)
            continue
        answer = _canonical_signature(c.response_signature_input, c.response_signature, response=True)
        known[by_source[(LOOKUP, str(c.id))]] = Body(c.response_body, answer_signature=answer)
    answered = [int(s) for k, s in by_source if k == ANSWERED]
    if answered:
        rows = session.exec(
            select(LookupLog, EvidenceSentAnswer)
            .outerjoin(EvidenceSentAnswer, col(EvidenceSentAnswer.message_id) == col(LookupLog.message_id))
            .where(col(LookupLog.id).in_(answered))
        )
        for row, sent in rows:
            request = None
            if row.request_signature_input and row.request_signature:
                request = _canonical_signature(
                    row.request_signature_input, row.request_signature, response=False
                )
            answer = None
            if sent is not None:
                answer = _canonical_signature(sent.signature_input, sent.signature, response=True)
            known[by_source[(ANSWERED, str(row.id))]] = Body(
                request_signature=request,
                answer_signature=answer,
                fields={
                    "message_id": row.message_id,
                    "peer": row.requester,
                    "request_path": row.request_path,
                    "request_digest": row.request_digest,
                    "answer_status": row.answer_status,
                    "answer_digest": row.answer_digest,
                },
            )
    return known


def _batch_bodies(session: Session, entries: Sequence[Mapping[str, Any]], known: dict[int, Body]) -> None:
    """The kept batch bodies of the inbox entries that came in a batch, by (keyid, nonce) of the
    sealed request; of several (a nonce used again after it expired), the one with the signed digest."""
    wanted: dict[int, tuple[str, str, str]] = {}
    for e in entries:
        if e["kind"] == INBOX and e["request_path"] == BATCH_PATH and e["request_digest"]:
            nonce = _nonce(e["request_signature_input"])
            wanted[e["seq"]] = (str(e["request_keyid"]), nonce or "", str(e["request_digest"]))
    if not wanted:
        return
    kept: dict[tuple[str, str], list[Any]] = {}
    nonces = sorted({n for _k, n, _d in wanted.values()})
    for row in _rows(session, EvidenceBatchBody, EvidenceBatchBody.nonce, nonces):
        if isinstance(row, tuple):  # one of this nonce's rows cannot be read
            for keyid, nonce, _digest in wanted.values():
                if nonce == row[1]:
                    kept.setdefault((keyid, nonce), []).append(UNREADABLE)
            continue
        kept.setdefault((row.keyid, row.nonce), []).append(row.body)
    digests: dict[int, str] = {}  # id(body) → its digest: each body hashed once
    for seq, (keyid, nonce, digest) in wanted.items():
        bodies = kept.get((keyid, nonce), [])
        chosen: Any = bodies[0] if bodies else MISSING
        for body in bodies:
            if isinstance(body, bytes) and body:
                if id(body) not in digests:
                    digests[id(body)] = chain.content_digest(body)
                if digests[id(body)] == digest:
                    chosen = body
                    break
        known[seq].batch = chosen


def _entries(
    engine: Engine | None, first: int = 0, last: int | None = None
) -> Iterator[tuple[list[dict[str, Any]], dict[int, Body]]]:
    from service.db import read_session

    after = first - 1
    while True:
        with read_session(engine) as session:
            query = select(EvidenceEntry).where(col(EvidenceEntry.seq) > after)
            if last is not None:
                query = query.where(col(EvidenceEntry.seq) <= last)
            entries = [
                entry_json(r) for r in session.exec(query.order_by(col(EvidenceEntry.seq)).limit(CHUNK))
            ]
            if not entries:
                return
            known = _known(session, entries)
        yield entries, known
        after = entries[-1]["seq"]


def verify_database(
    engine: Engine | None = None,
    *,
    skew: timedelta = timedelta(seconds=300),
    purge_before: datetime | None = None,
) -> Report:
    from service.db import read_session

    with read_session(engine) as session:
        keys = directory_keys(session)
        node = session.exec(select(LocalNode)).first()
        head = session.get(EvidenceHead, 1)
    node_id = node.node_id if node else None
    verifier = Verifier(keys, skew=skew, purge_before=purge_before, node_id=node_id)
    for entries, known in _entries(engine):
        for entry in entries:
            verifier.feed(entry, known[entry["seq"]])
    with read_session(engine) as session:
        checkpoints = [
            checkpoint_json(c)
            for c in session.exec(select(EvidenceCheckpoint).order_by(col(EvidenceCheckpoint.id)))
        ]
    if head is not None:
        verifier.head(head.seq, head.head_hash)
    verifier.checkpoints(checkpoints, node_id)
    return verifier.report


# --- bundles ---------------------------------------------------------------------------------------


def export_bundle(
    engine: Engine | None,
    out: Path,
    *,
    start: datetime,
    end: datetime,
    include_bodies: bool = False,
    now: datetime,
) -> dict[str, Any]:
    """Write the entries of messages from ``start`` (inclusive) to ``end`` (exclusive), with every
    entry between them and on to the first checkpoint that covers the last, the checkpoints among
    them and the public keys they need, as one JSON file; its summary.

    Bodies carry personal data: only with ``include_bodies``, and with them the kept body of each
    batch that brought a message in the window (``batches``, by its signed digest: it holds the
    batch's other items too). Receipts (no personal data) always."""
    from service.db import read_session

    with read_session(engine) as session:
        node = session.exec(select(LocalNode)).first()
        in_range = select(EvidenceEntry.seq).where(
            col(EvidenceEntry.occurred_at) >= start, col(EvidenceEntry.occurred_at) < end
        )
        seqs = list(session.exec(in_range))
        keys = directory_keys(session)
        first, last = (min(seqs), max(seqs)) if seqs else (0, -1)
        cover = (
            session.exec(
                select(EvidenceCheckpoint)
                .where(col(EvidenceCheckpoint.seq) >= last)
                .order_by(col(EvidenceCheckpoint.seq), col(EvidenceCheckpoint.id))
            ).first()
            if seqs
            else None
        )
        through = cover.seq if cover is not None else last
        prev = session.get(EvidenceEntry, first - 1) if first > 1 else None
        checkpoints = (
            [
                checkpoint_json(c)
                for c in session.exec(
                    select(EvidenceCheckpoint)
                    .where(col(EvidenceCheckpoint.seq) >= first, col(EvidenceCheckpoint.seq) <= through)
                    .order_by(col(EvidenceCheckpoint.id))
                )
            ]
            if seqs
            else []
        )
    entries: list[dict[str, Any]] = []
    bodies: dict[str, str | None] = {}
    batches: dict[str, str | None] = {}
    answers: dict[str, str] = {}
    used: dict[str, KeyInfo] = {}
    for chunk, known in _entries(engine, first, through) if seqs else ():
        for data in chunk:
            entries.append(data)
            seq = int(data["seq"])
            body = known[seq]
            if include_bodies and isinstance(body.body, bytes | bytearray) and first <= seq <= last:
                bodies[str(seq)] = base64.b64encode(body.body).decode("ascii") if body.body else None
            batch, signed = body.batch, data["request_digest"]
            if include_bodies and isinstance(batch, bytes) and first <= seq <= last and signed not in batches:
                batches[str(signed)] = base64.b64encode(batch).decode("ascii") if batch else None
            if body.answer is not None and data["kind"] == OUTBOX:
                answers[str(seq)] = base64.b64encode(body.answer).decode("ascii")
            for keyid, recorded in (
                (data["request_keyid"], data["request_public_key"]),
                (data["answer_keyid"], data["answer_public_key"]),
            ):
                if keyid and keyid not in used:
                    used[keyid] = keys.get(keyid) or KeyInfo(keyid, recorded or "", None, None, "sealed")
    for cp in checkpoints:
        keyid = str(cp["keyid"])
        if keyid in keys:
            used[keyid] = keys[keyid]
    bundle = {
        "format": BUNDLE_FORMAT,
        "node_id": node.node_id if node else None,
        "exported_at": chain.timestamp(now),
        "from": chain.timestamp(start),
        "to": chain.timestamp(end),
        "first_seq": first if seqs else None,
        "last_seq_in_range": last if seqs else None,
        "prev_hash": (prev.entry_hash if prev is not None else chain.GENESIS),
        "entries": entries,
        "checkpoints": checkpoints,
        "keys": [k.as_json() for k in sorted(used.values(), key=lambda k: k.keyid)],
        "bodies": bodies,
        "batches": batches,
        "receipts": answers,
    }
    out.write_text(json.dumps(bundle, indent=1, sort_keys=True), encoding="utf-8")
    return {
        "entries": len(entries),
        "in_range": len(seqs),
        "checkpoints": len(checkpoints),
        "bodies": len(bodies),
        "batches": len(batches),
    }


class BundleInvalid(ValueError):
    """The file is not an evidence bundle."""


def verify_bundle(path: Path, *, skew: timedelta = timedelta(seconds=300)) -> Report:
    """Check a bundle with nothing but its contents (and the keys in it)."""
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleInvalid(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleInvalid(f"{path.name} is not a {BUNDLE_FORMAT} file")
    try:
        keys = {k["keyid"]: KeyInfo.from_json(k) for k in bundle["keys"]}
        entries = sorted(bundle["entries"], key=lambda e: int(e["seq"]))
        bodies, receipts = bundle.get("bodies", {}), bundle.get("receipts", {})
        batches = bundle.get("batches", {})  # bundles before migration 0017 have none
        decoded: dict[str, bytes] = {}  # each batch decoded once, for all the entries it brought
        first = int(bundle["first_seq"]) if bundle.get("first_seq") is not None else 1
        verifier = Verifier(
            keys,
            first_seq=first,
            prev_hash=str(bundle["prev_hash"]),
            skew=skew,
            node_id=bundle.get("node_id"),
        )
        for entry in entries:
            seq = str(entry["seq"])
            known = Body()
            if seq in bodies:
                known.body = base64.b64decode(bodies[seq]) if bodies[seq] is not None else b""
            if seq in receipts:
                known.answer = base64.b64decode(receipts[seq])
            signed = entry["request_digest"]
            if entry["request_path"] == BATCH_PATH and signed in batches:
                if signed not in decoded:
                    text = batches[signed]
                    decoded[signed] = base64.b64decode(text) if text is not None else b""
                known.batch = decoded[signed]
            verifier.feed(entry, known)
        verifier.checkpoints(bundle["checkpoints"], bundle.get("node_id"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleInvalid(f"{path.name} is not a well-formed bundle: {type(exc).__name__} {exc}") from exc
    if not bundle["checkpoints"] and entries:
        verifier.note(None, "no signed checkpoint covers these entries yet: their order is shown, not signed")
    return verifier.report
