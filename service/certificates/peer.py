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

The name must match the holder's (whitespace and full-width forms aside): a caller that does not
know the name learns nothing, not even that the number holds a certificate (``found: false``).
Every lookup is logged in ``lookup_log``: who asked (node and key), when, for what, found or not,
the masked number, and the person when found.
"""

from __future__ import annotations

import logging
import unicodedata

from sqlmodel import Session, select

from service import idnumbers
from service.certificates.schemas import CertificateDoc, LookupAnswer, LookupPayload
from service.certificates.service import document, ensure_certificate
from service.errors import Conflict
from service.exchange.inbox import InboundMessage, PeerEndpoint
from service.models import LookupLog, LookupPurpose, Person

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


def answer_lookup(session: Session, inbound: InboundMessage[LookupPayload]) -> LookupAnswer:
    envelope, payload = inbound.envelope, inbound.envelope.payload
    message_id = str(envelope.message_id)
    if session.exec(select(LookupLog).where(LookupLog.message_id == message_id)).first() is not None:
        raise Conflict("this message_id was already answered")
    person = session.exec(
        select(Person).where(
            Person.id_number == payload.id_number,
            Person.origin_node == envelope.recipient,
            Person.merged_into == None,  # noqa: E711 (SQL IS NULL)
        )
    ).first()
    result = LookupAnswer(found=False)
    if person is not None and same_name(person.name, payload.name):
        # Being in the register is holding the certificate: issue it now if nobody has yet.
        certificate = ensure_certificate(session, person, None)
        if certificate is not None:
            doc = disclose(document(session, certificate, person), payload.purpose)
            result = LookupAnswer(found=True, certificate=doc)
    session.add(
        LookupLog(
            message_id=message_id,
            requester=envelope.sender,
            keyid=inbound.keyid,
            purpose=payload.purpose,
            person_id=person.id if result.found and person is not None else None,
            id_number_masked=idnumbers.mask(payload.id_number),
            found=result.found,
            looked_up_at=inbound.received_at,
        )
    )
    session.flush()
    log.info(
        "certificate lookup requester=%s purpose=%s found=%s id_number=%s",
        envelope.sender,
        payload.purpose.value,
        result.found,
        idnumbers.mask(payload.id_number),
    )
    return result


ENDPOINTS = (
    PeerEndpoint(
        path=PATH,
        message_type=LOOKUP,
        payload=LookupPayload,
        answer=answer_lookup,
        response_model=LookupAnswer,
        summary="婚育证明查验: look a certificate up (answered at once, signed)",
    ),
)
