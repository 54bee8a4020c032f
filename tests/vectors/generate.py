"""Make ``tests/vectors/verification-request.json`` and ``tests/vectors/batch.json``, the worked
examples of docs/protocol.md (sections 15 and 18).

    python -m tests.vectors.generate            # (re)write both files
    python -m tests.vectors.generate --check    # exit 1, naming the file, if one is not what this makes

(``--output`` names another place for the first file, and then only that one is made; ``--batch-output``
the same for the second.)

Only the inputs are written down here: two fixed test keys, the signing times, the nonce and the
message. Everything else — the envelope's bytes, Content-Digest, both signature bases,
Signature-Input, Signature, the receipt and its ``due_at`` — comes from the project's own code
(``service.exchange.envelope``, ``service.signing``, ``service.sla.deadlines``) with default
settings, the environment ignored. The answer is bound to the request (RFC 9421 ``req``,
docs/protocol.md section 6.1) as a live node binds it: ``service.exchange.routes.request_binding``
of the request as it arrives. Ed25519 (RFC 8032) is deterministic, so the same inputs give the
same bytes on every machine, and the file is checked in: ``tests/signing/test_vectors.py`` fails when
the code no longer makes it byte for byte, and ``tests/interop`` checks it against an independent
RFC 9421 implementation.

Before writing, the generator verifies what it made with the project's verifier, the clock at
``created + 1``, each answer with the binding the sender takes from the request it sent; it writes
nothing that the node itself would refuse.

The file is ``json.dumps(indent=2, ensure_ascii=False)`` without a final newline: the form the
example was first published in, kept so that its bytes never change without a reason. The batch
example is in the same form.

The batch example is one ``POST /peer/v1/batch`` from 410105 to 411627 with four items — the same
协查 request as the first example, a 通报 (arrival), an item whose ``sender`` is not the signing
node, and the first item again — and the signed answer, it and every item's result bound to the
batch request: the first item's result has the first example's status, receipt body and
Signature-Input (its Signature differs: it answers another request), the 通报's receipt carries its
ack deadline, the third is a signed ``403 sender_mismatch`` problem, and the
fourth a ``200 duplicate`` receipt. Made from pieces (``service.exchange.batch``, the receipt and
problem bodies, the deadline rules), like the first; ``tests/exchange/test_batch.py`` checks that a
node, its clock at the example's time and holding its keys, answers the request with exactly this.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from starlette.requests import Request

from service.clock import clock
from service.config import Settings
from service.errors import SenderMismatch
from service.exchange import batch, routes
from service.exchange.envelope import canonical_json, envelope_body, receipt_body
from service.models import NotificationKind, Priority, Sex, Topic
from service.notifications.schemas import ArrivalDetails, NotificationPayload
from service.notifications.service import NOTIFICATION
from service.notifications.service import deadline_rule as notification_deadline_rule
from service.signing.http import (
    RequestBinding,
    content_digest,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)
from service.signing.keys import b64url, public_key_from_text, public_key_text
from service.sla.deadlines import due_at
from service.subjects import Subject
from service.verification.schemas import RequestPayload
from service.verification.service import REQUEST, deadline_rule

OUTPUT = Path(__file__).resolve().parent / "verification-request.json"
BATCH_OUTPUT = Path(__file__).resolve().parent / "batch.json"
HEADERS = ("Content-Type", "Content-Digest", "Signature-Input", "Signature")

# Kept as first published: "PROTOCOL.md" is the first edition of docs/protocol.md. Rewording it would
# change no signed byte, but would change the file that other counties may already have copied.
ABOUT = (
    "Worked example of PROTOCOL.md: a verification request from 410105 to 411627 and its signed receipt. "
    "Keys are fixed test keys (private seeds 0x00..0x1f and 0x20..0x3f) for tests only. Ed25519 is "
    "deterministic: the same inputs must give these exact signatures. Its created/expires lie in the "
    "past: a test that runs full verification freezes the clock at created + 1 (2026-11-22T01:30:01Z). "
    "due_at: normal priority, 30 calendar days, end of day Asia/Shanghai."
)

# --- the inputs ------------------------------------------------------------------------------------

ASKER, ANSWERER = "410105/k1", "411627/k1"  # 金水区 (the host) asks 太康县 (the origin)
SEEDS = {ASKER: bytes(range(0x00, 0x20)), ANSWERER: bytes(range(0x20, 0x40))}  # test keys, never real ones

PATH = "/peer/v1/verification-requests"
CREATED = datetime(2026, 11, 22, 1, 30, tzinfo=UTC)  # 09:30 in Shanghai; Unix time 1795311000
LIFETIME = timedelta(seconds=300)  # expires = created + 300, the longest a node accepts by default
NONCE = b64url(b"nonce-0000000001")  # 16 bytes, the minimum; fixed here, random in real requests
RECEIVED = CREATED + timedelta(seconds=1)  # the answering node's clock when the request arrives
STATUS = 202  # the first delivery of an asynchronous message
CONTENT_TYPE = "application/json"

MESSAGE_ID = UUID("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10")
PAYLOAD = RequestPayload(
    subject=Subject(id_number="411627199503080024", name="王秀英", sex=Sex.F, birth_date=date(1995, 3, 8)),
    topic=Topic.marital_status,
    priority=Priority.normal,
    key_target=False,
    question="请核实该对象婚育情况。",
    reference="JS-2026-000123",
)


# The batch example: the same keys and times; a 通报 besides the 协查 request, and a stranger's item.
BATCH_PATH = "/peer/v1" + batch.PATH
BATCH_NONCE = b64url(b"nonce-0000000002")
NOTIFICATION_ID = UUID("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11")
FOREIGN_ID = UUID("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d12")
STRANGER = "310110"  # 杨浦区: named as the sender of the third item, which 410105 signs
ARRIVED = date(2026, 11, 20)
BATCH_ABOUT = (
    "Worked example of docs/protocol.md section 18: one POST /peer/v1/batch from 410105 to 411627 with "
    "four items (the 协查 request of verification-request.json, an arrival 通报, an item whose sender is "
    "not the signing node, the first item again) and the signed answer, one result per item: each is the "
    "answer the item's own endpoint would give, with that answer's own signature, bound like the whole "
    "answer to the batch request (docs/protocol.md section 6.1; the first has verification-request.json's "
    "receipt and Signature-Input, and another Signature, since it answers another request). Same test "
    "keys, times and verification rule as verification-request.json (clock at created + 1, "
    "2026-11-22T01:30:01Z)."
)


class RecordingKey(Ed25519PrivateKey):
    """An Ed25519 key that remembers every message it signs: the signature base, as the code built it."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.signed: list[bytes] = []

    def sign(self, data: bytes) -> bytes:
        self.signed.append(bytes(data))
        return self._key.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return self._key.private_bytes(encoding, format, encryption_algorithm)

    def private_bytes_raw(self) -> bytes:
        return self._key.private_bytes_raw()

    def __copy__(self) -> RecordingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RecordingKey:
        return self


def private_key(keyid: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEEDS[keyid])


def _exactly(headers: Mapping[str, str]) -> dict[str, str]:
    """The four signed-message headers in the vector's order (and no others)."""
    by_name = {k.lower(): v for k, v in headers.items()}
    if sorted(by_name) != sorted(h.lower() for h in HEADERS):
        raise AssertionError(f"the signer returned headers {sorted(headers)}, expected {list(HEADERS)}")
    return {name: by_name[name.lower()] for name in HEADERS}


def _signed_once(key: RecordingKey) -> str:
    (base,) = key.signed
    return base.decode("ascii")


def received_binding(path: str, headers: Mapping[str, str]) -> RequestBinding:
    """What the asked node binds its answer to (RFC 9421 ``req``): the live responder's own
    ``routes.request_binding`` of the request as it arrives (the path and header lines an ASGI
    server hands the node)."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }
    binding = routes.request_binding(Request(scope))
    if binding is None:
        raise AssertionError(f"the node would not bind its answer to the signed request {path}")
    return binding


def sent_binding(request: Mapping[str, Any]) -> RequestBinding:
    """What the asking node checks the answer against: the binding of the request it sent (the
    vector's ``request``, its path and headers), as ``service.exchange.client`` takes it."""
    binding = RequestBinding.of_request(request["path"], request["headers"].items())
    if binding is None:
        raise AssertionError(f"the vector's request to {request['path']} cannot be bound")
    return binding


def build() -> dict[str, Any]:
    """The vector, made by the project's code from the inputs above."""
    body = envelope_body(
        message_id=MESSAGE_ID,
        type=REQUEST,
        sender=ASKER.split("/")[0],
        recipient=ANSWERER.split("/")[0],
        sent_at=CREATED,
        correlation_id=None,
        payload=PAYLOAD,
    )
    asker = RecordingKey(private_key(ASKER))
    request_headers = _exactly(
        sign_request(
            method="POST",
            path=PATH,
            body=body,
            key=asker,
            keyid=ASKER,
            created=CREATED,
            lifetime=LIFETIME,
            nonce=NONCE,
        )
    )
    # The receiver's policy with default settings (the environment ignored): normal, 30 calendar days.
    rule = deadline_rule(Settings.model_construct(), PAYLOAD.topic, PAYLOAD.priority)
    receipt = receipt_body(
        message_id=str(MESSAGE_ID),
        status="accepted",
        received_at=RECEIVED,
        digest=request_headers["Content-Digest"],
        due_at=due_at(RECEIVED, rule),
    )
    answerer = RecordingKey(private_key(ANSWERER))
    response_headers = _exactly(
        sign_response(
            status=STATUS,
            body=receipt,
            key=answerer,
            keyid=ANSWERER,
            created=RECEIVED,
            content_type=CONTENT_TYPE,
            request=received_binding(PATH, request_headers),
        )
    )
    vector = {
        "about": ABOUT,
        "keys": {
            keyid: {
                "private_seed_hex": seed.hex(),
                "public_key": public_key_text(private_key(keyid).public_key()),
            }
            for keyid, seed in SEEDS.items()
        },
        "request": {
            "method": "POST",
            "path": PATH,
            "headers": request_headers,
            "body": body.decode("utf-8"),
            "signature_base": _signed_once(asker),
        },
        "response": {
            "status": STATUS,
            "headers": response_headers,
            "body": receipt.decode("utf-8"),
            "signature_base": _signed_once(answerer),
        },
    }
    self_check(vector)
    return vector


def _notification_payload() -> NotificationPayload:
    """Validated as the receiver would, on the example's day (its dates must not lie in the future)."""
    frozen, offset = clock._frozen, clock._offset  # put back exactly as found
    clock.freeze(RECEIVED)
    try:
        return NotificationPayload(
            subject=PAYLOAD.subject,
            kind=NotificationKind.arrival,
            occurred_on=ARRIVED,
            details=ArrivalDetails(arrived_on=ARRIVED),
        )
    finally:
        clock._frozen, clock._offset = frozen, offset


def build_batch() -> dict[str, Any]:
    """The batch example, made by the project's code from the inputs above."""
    sender, receiver = ASKER.split("/")[0], ANSWERER.split("/")[0]
    request = envelope_body(
        message_id=MESSAGE_ID,
        type=REQUEST,
        sender=sender,
        recipient=receiver,
        sent_at=CREATED,
        correlation_id=None,
        payload=PAYLOAD,
    )
    notification_payload = _notification_payload()
    notification = envelope_body(
        message_id=NOTIFICATION_ID,
        type=NOTIFICATION,
        sender=sender,
        recipient=receiver,
        sent_at=CREATED,
        correlation_id=None,
        payload=notification_payload,
    )
    foreign = envelope_body(
        message_id=FOREIGN_ID,
        type=NOTIFICATION,
        sender=STRANGER,
        recipient=receiver,
        sent_at=CREATED,
        correlation_id=None,
        payload=notification_payload,
    )
    items = [request, notification, foreign, request]
    body = batch.request_body(items)
    asker = RecordingKey(private_key(ASKER))
    request_headers = _exactly(
        sign_request(
            method="POST",
            path=BATCH_PATH,
            body=body,
            key=asker,
            keyid=ASKER,
            created=CREATED,
            lifetime=LIFETIME,
            nonce=BATCH_NONCE,
        )
    )
    # The receiver's policy with default settings (the environment ignored), as in build().
    settings = Settings.model_construct()
    request_due = due_at(RECEIVED, deadline_rule(settings, PAYLOAD.topic, PAYLOAD.priority))
    notification_due = due_at(RECEIVED, notification_deadline_rule(settings, notification_payload.kind))

    def receipt(message: bytes, message_id: UUID, status: str, due: datetime | None) -> bytes:
        return receipt_body(
            message_id=str(message_id),
            status=status,
            received_at=RECEIVED,
            digest=content_digest(message),
            due_at=due,
        )

    mismatch = SenderMismatch(f"sender {STRANGER} is not the signing node {sender}")
    answers = [
        batch.Answer(str(MESSAGE_ID), 202, receipt(request, MESSAGE_ID, "accepted", request_due)),
        batch.Answer(
            str(NOTIFICATION_ID), 202, receipt(notification, NOTIFICATION_ID, "accepted", notification_due)
        ),
        batch.Answer(str(FOREIGN_ID), mismatch.status_code, canonical_json(mismatch.problem())),
        batch.Answer(str(MESSAGE_ID), 200, receipt(request, MESSAGE_ID, "duplicate", request_due)),
    ]
    answerer = private_key(ANSWERER)
    bound = received_binding(BATCH_PATH, request_headers)  # the answer and each item's result
    response = batch.response_body(answers, key=answerer, keyid=ANSWERER, created=RECEIVED, request=bound)
    recording = RecordingKey(answerer)
    response_headers = _exactly(
        sign_response(
            status=200,
            body=response,
            key=recording,
            keyid=ANSWERER,
            created=RECEIVED,
            content_type=CONTENT_TYPE,
            request=bound,
        )
    )
    vector = {
        "about": BATCH_ABOUT,
        "keys": {
            keyid: {
                "private_seed_hex": seed.hex(),
                "public_key": public_key_text(private_key(keyid).public_key()),
            }
            for keyid, seed in SEEDS.items()
        },
        "items": [item.decode("utf-8") for item in items],
        "request": {
            "method": "POST",
            "path": BATCH_PATH,
            "headers": request_headers,
            "body": body.decode("utf-8"),
            "signature_base": _signed_once(asker),
        },
        "response": {
            "status": 200,
            "headers": response_headers,
            "body": response.decode("utf-8"),
            "signature_base": _signed_once(recording),
        },
    }
    self_check(vector)
    self_check_batch(vector)
    return vector


def self_check_batch(vector: Mapping[str, Any]) -> None:
    """Every item's result verifies on its own, as a response signed by 411627 bound to the batch
    request (raises if not)."""
    key = public_key_from_text(vector["keys"][ANSWERER]["public_key"])
    bound = sent_binding(vector["request"])
    results = json.loads(vector["response"]["body"])["results"]
    if len(results) != len(vector["items"]):
        raise AssertionError("one result per item")
    for result in results:
        status, body = result["status"], result["body"].encode("utf-8")
        verify_response(
            status=status,
            headers=[
                ("Content-Type", batch.content_type_of(status)),
                ("Content-Digest", content_digest(body)),
                ("Signature-Input", result["signature_input"]),
                ("Signature", result["signature"]),
            ],
            body=body,
            resolve_key=lambda keyid: key if keyid == ANSWERER else None,
            expected_node=ANSWERER.split("/")[0],
            now=RECEIVED + timedelta(seconds=1),
            request=bound,
        )


def self_check(vector: Mapping[str, Any]) -> None:
    """The node's own verifier accepts both messages with its clock at created + 1, the answer bound
    to the request (raises if not)."""
    keys = {keyid: public_key_from_text(k["public_key"]) for keyid, k in vector["keys"].items()}
    req, res = vector["request"], vector["response"]
    verify_request(
        method=req["method"],
        path=req["path"],
        headers=req["headers"].items(),
        body=req["body"].encode("utf-8"),
        resolve_key=lambda keyid: keys[ASKER] if keyid == ASKER else None,
        now=RECEIVED,
    )
    verify_response(
        status=res["status"],
        headers=res["headers"].items(),
        body=res["body"].encode("utf-8"),
        resolve_key=lambda keyid: keys[ANSWERER] if keyid == ANSWERER else None,
        expected_node=ANSWERER.split("/")[0],
        now=RECEIVED + timedelta(seconds=1),
        request=sent_binding(req),
    )


def render(vector: Mapping[str, Any]) -> bytes:
    """The file's exact bytes."""
    return json.dumps(vector, indent=2, ensure_ascii=False).encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vectors.generate", description="Make the protocol's worked example."
    )
    parser.add_argument("--check", action="store_true", help="compare, do not write; exit 1 if it differs")
    parser.add_argument("--output", type=Path, default=None, help=f"default: tests/vectors/{OUTPUT.name}")
    parser.add_argument(
        "--batch-output", type=Path, default=None, help=f"default: tests/vectors/{BATCH_OUTPUT.name}"
    )
    args = parser.parse_args(argv)
    jobs: list[tuple[Path, Callable[[], dict[str, Any]]]] = []
    if args.output is not None or args.batch_output is None:
        jobs.append((args.output or OUTPUT, build))
    if args.batch_output is not None or args.output is None:
        jobs.append((args.batch_output or BATCH_OUTPUT, build_batch))
    status = 0
    for target, make in jobs:
        status = max(status, _one(target, render(make()), check=args.check))
    return status


def _one(target: Path, made: bytes, *, check: bool) -> int:
    if check:
        if not target.is_file():
            print(f"{target}: missing; run `python -m tests.vectors.generate`", file=sys.stderr)
            return 1
        if target.read_bytes() != made:
            print(
                f"{target}: differs from what the code makes now; run `python -m tests.vectors.generate`"
                " and review the difference (a changed signature is a changed protocol)",
                file=sys.stderr,
            )
            return 1
        print(f"{target}: up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(made)  # bytes: no newline translation on any OS
    print(f"wrote {target} ({len(made)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
