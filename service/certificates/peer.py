"""婚育证明 lookups, origin side: ``POST /peer/v1/certificate-lookups`` (synchronous, signed 200).

Only peers in the directory reach this code (the exchange layer refuses unknown keys first). The
answer discloses only what the purpose needs (minimum necessary disclosure, PIPL):

================== ===========================================================================
purpose            fields of the certificate disclosed
================== ===========================================================================
residence_check    certificate_no, holder, marital_status, status, issued_by, issued_at,
                   updated_at — enough to confirm she holds a certificate and her status
service            the above + contraception, children — the host's 计生 services need them
birth_registration the above + marriage_date, children — 生育登记 needs marriage and birth order
================== ===========================================================================

Least disclosure (docs/protocol.md, "Standing"): a look-up is answered only when the asking node has
standing for the person and purpose — the register gives it as her host (``host_node``), or its
latest 流入/流出通报 about her number is an arrival, or (residence_check only) an open 协查 with it is
about her. Any other look-up is refused with a signed ``403 no_standing``, the same answer whether
the number is in the register or not (a refusal never tells a stranger that she exists). Under the
policy ``lookup_standing=any_trusted`` it is answered instead, and flagged to the staff (a
``flagged_lookup`` notice about her). Each peer's look-ups are also limited in rate and number at
once (``service.certificates.throttle``), before any of this.

The name must match the holder's (whitespace and full-width forms aside): a caller that does not
know the name learns nothing, not even that the number holds a certificate (``found: false``).
Every lookup answered or refused is recorded in ``lookup_log``: who asked (node and key), when, for
what, with what standing, refused or found, the masked number, and the person (by id) whenever the
number is in the register — her page lists who looked her up. Logs carry the person's id only.

For the evidence log (docs/security/evidence.md) the same row keeps the request as signed — its
``@path``, Content-Digest, Signature-Input and Signature, taken from the request by ``admit`` (which
runs after the signature was verified and holds for the whole request) — and what was answered
(status, the answer body's Content-Digest), never the body itself (it holds the ID number). A
rejected request stores nothing (the transaction is rolled back). The sealer seals the row as an
entry of kind ``lookup_answered``.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select
from starlette.requests import Request

from service import idnumbers
from service.certificates.schemas import CertificateDoc, LookupAnswer, LookupPayload
from service.certificates.service import document, ensure_certificate
from service.certificates.throttle import peer_limits
from service.config import get_settings
from service.errors import Conflict, DomainError
from service.evidence.chain import content_digest
from service.evidence.record import ANSWER_STATE, SentRequest, received_request
from service.exchange.envelope import canonical_json
from service.exchange.inbox import InboundMessage, PeerEndpoint
from service.models import (
    CaseStatus,
    Direction,
    ItemType,
    LookupLog,
    LookupPurpose,
    LookupStanding,
    NoticeKind,
    Notification,
    NotificationKind,
    Person,
    Role,
    StaffNotice,
    VerificationCase,
)
from service.signing import pii

LOOKUP = "certificate.lookup"
PATH = "/certificate-lookups"
log = logging.getLogger("yipanqi.certificates")

BASE = frozenset(
    {"certificate_no", "holder", "marital_status", "status", "issued_by", "issued_at", "updated_at"}
)
DISCLOSED: dict[LookupPurpose, frozenset[str]] = {
    LookupPurpose.residence_check: BASE,
    LookupPurpose.service: BASE | {"contraception", "children"},
    LookupPurpose.birth_registration: BASE | {"marriage_date", "children"},
}


def disclose(doc: CertificateDoc, purpose: LookupPurpose) -> CertificateDoc:
    """The certificate with only the purpose's fields set (so only they are serialised)."""
    return CertificateDoc(**{name: getattr(doc, name) for name in DISCLOSED[purpose]})


def same_name(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return "".join(unicodedata.normalize("NFKC", s).split())

    return norm(a) == norm(b)


class NoStanding(DomainError):
    status_code = 403
    code = "no_standing"
    title = "No standing for this look-up"


# One text for every refusal: it says nothing of the person, not even whether she is registered.
REFUSAL = (
    "this node answers a certificate look-up only from a node with standing for the person and "
    "purpose: her registered host, a node that notified her arrival, or one in an open 协查 about "
    "her (docs/protocol.md, Standing)"
)


def standing(
    session: Session, asker: str, id_number: str, person: Person | None, purpose: LookupPurpose
) -> LookupStanding:
    """The asking node's standing for this number and purpose (docs/protocol.md, "Standing").

    Decided by the number, so that a node that notified the arrival of a woman this register does
    not hold learns that (``found: false``), and a node without standing learns nothing either way.
    """
    if person is not None and person.host_node == asker:
        return LookupStanding.host
    # Its latest 流入/流出通报 about her: an arrival (not followed by its departure) gives standing.
    latest = session.exec(
        select(Notification.kind)
        .where(
            Notification.direction == Direction.incoming,
            Notification.peer == asker,
            Notification.subject_id_number_index == pii.blind_index(id_number, pii.ID_NUMBER),
            col(Notification.kind).in_((NotificationKind.arrival, NotificationKind.departure)),
        )
        .order_by(col(Notification.occurred_on).desc(), col(Notification.id).desc())
    ).first()
    if latest == NotificationKind.arrival:
        return LookupStanding.arrival
    if purpose == LookupPurpose.residence_check:  # a 协查 carries what else it needs itself
        case = session.exec(
            select(VerificationCase.id).where(
                VerificationCase.peer == asker,
                VerificationCase.subject_id_number_index == pii.blind_index(id_number, pii.ID_NUMBER),
                VerificationCase.status != CaseStatus.answered,
            )
        ).first()
        if case is not None:
            return LookupStanding.case
    return LookupStanding.none


def flag(session: Session, person_id: int, now: datetime) -> None:
    """Tell the supervisors (a flagged_lookup notice about her; an old one is raised again, unread)."""
    notice = session.exec(
        select(StaffNotice).where(
            StaffNotice.kind == NoticeKind.flagged_lookup,
            StaffNotice.item_type == ItemType.person,
            StaffNotice.item_id == person_id,
        )
    ).first()
    if notice is None:
        notice = StaffNotice(
            kind=NoticeKind.flagged_lookup,
            item_type=ItemType.person,
            item_id=person_id,
            role=Role.supervisor,
            due_at=now,
            created_at=now,
        )
    else:
        notice.created_at, notice.due_at, notice.read_at, notice.read_by = now, now, None, None
    session.add(notice)


@dataclass
class _Asked:
    """The request being answered, as signed (set by ``admit`` for the request's duration, on its
    thread), and the look-up it was recorded as (set by ``answer_lookup``)."""

    request: SentRequest | None
    message_id: str | None = None


_ASKED: ContextVar[_Asked | None] = ContextVar("yipanqi_lookup_asked", default=None)


def _answer_body(answer: LookupAnswer | DomainError) -> bytes:
    """The bytes the answer goes out as (service.exchange.inbox.answer writes them the same way);
    a mismatch would show as an answer signature that does not verify over the sealed digest."""
    if isinstance(answer, DomainError):
        return canonical_json(answer.problem())
    return canonical_json(answer.model_dump(mode="json"))


def answer_lookup(session: Session, inbound: InboundMessage[LookupPayload]) -> LookupAnswer | DomainError:
    """The answer, or the refusal (returned, not raised: it is recorded in the same transaction)."""
    envelope, payload = inbound.envelope, inbound.envelope.payload
    message_id = str(envelope.message_id)
    if session.exec(select(LookupLog).where(LookupLog.message_id == message_id)).first() is not None:
        raise Conflict("this message_id was already answered")
    person = session.exec(
        select(Person).where(
            Person.id_number_index == pii.blind_index(payload.id_number, pii.ID_NUMBER),
            Person.origin_node == envelope.recipient,
            Person.merged_into == None,  # noqa: E711 (SQL IS NULL)
        )
    ).first()
    has = standing(session, envelope.sender, payload.id_number, person, payload.purpose)
    without = has == LookupStanding.none
    refused = without and get_settings().lookup_standing == "standing"
    flagged = without and not refused and person is not None
    result = LookupAnswer(found=False)
    if not refused and person is not None and same_name(person.name, payload.name):
        # Being in the register is holding the certificate: issue it now if nobody has yet.
        certificate = ensure_certificate(session, person, None)
        if certificate is not None:
            doc = disclose(document(session, certificate, person), payload.purpose)
            result = LookupAnswer(found=True, certificate=doc)
    person_id = person.id if person is not None else None
    answer: LookupAnswer | DomainError = NoStanding(REFUSAL) if refused else result
    row = LookupLog(
        message_id=message_id,
        requester=envelope.sender,
        keyid=inbound.keyid,
        purpose=payload.purpose,
        person_id=person_id,
        id_number_masked=idnumbers.mask(payload.id_number),
        found=result.found,
        looked_up_at=inbound.received_at,
        standing=has,
        refused=refused,
        flagged=flagged,
    )
    asked = _ASKED.get()
    request = asked.request if asked is not None else None
    if asked is not None and request is not None:  # its evidence (always, through the route)
        asked.message_id = message_id
        row.request_path, row.request_digest = request.path, request.digest
        row.request_signature_input, row.request_signature = request.signature_input, request.signature
        row.answer_status = answer.status_code if isinstance(answer, DomainError) else 200
        row.answer_digest = content_digest(_answer_body(answer))
    session.add(row)
    if flagged and person_id is not None:
        flag(session, person_id, inbound.received_at)
    session.flush()
    # The person's id only (never her number): whether she exists stays between the origin's staff.
    if refused:
        log.warning(
            "certificate lookup refused requester=%s purpose=%s standing=none person=%s",
            envelope.sender,
            payload.purpose.value,
            person_id if person_id is not None else "-",
        )
        return answer
    (log.warning if flagged else log.info)(
        "certificate lookup requester=%s purpose=%s standing=%s found=%s flagged=%s person=%s",
        envelope.sender,
        payload.purpose.value,
        has.value,
        result.found,
        flagged,
        person_id if person_id is not None else "-",
    )
    return result


def _raw_path(request: Request) -> str:
    raw_path = request.scope.get("raw_path")
    return raw_path.decode("latin-1") if raw_path else request.url.path


def admit(request: Request, peer: str) -> AbstractContextManager[None]:
    """The peer's place among its look-ups in flight, within its rate (429 when there is none);
    while it is held, the request as signed is at hand for ``answer_lookup`` (the evidence)."""
    return _admitted(request, peer)


@contextmanager
def _admitted(request: Request, peer: str) -> Iterator[None]:
    with peer_limits(request).admit(peer):
        asked = _Asked(received_request(_raw_path(request), request.headers.items()))
        token = _ASKED.set(asked)
        try:
            yield
        finally:
            _ASKED.reset(token)
        if asked.message_id is not None:  # recorded and committed (an error skips this)
            setattr(request.state, ANSWER_STATE, asked.message_id)  # for keep_answer, once signed


ENDPOINTS = (
    PeerEndpoint(
        path=PATH,
        message_type=LOOKUP,
        payload=LookupPayload,
        answer=answer_lookup,
        admit=admit,
        response_model=LookupAnswer,
        summary="婚育证明查验: look a certificate up (answered at once, signed)",
    ),
)
