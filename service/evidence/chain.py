"""The evidence log's formats: an entry's canonical form and hash, the signature bases it is
verified by, and a checkpoint's signed payload. Pure functions of plain values (no database), so
that ``yipanqi audit verify`` and an offline bundle check (``verify --bundle``, and the standalone
procedure in the security notes) compute exactly the same bytes.

- An entry is a flat JSON object of strings, integers and nulls (times as
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ``). Its canonical form is that object without ``entry_hash``,
  serialised with sorted keys, no white space, ASCII only (``json.dumps(sort_keys=True,
  separators=(",", ":"))``: RFC 8785 for such values). ``entry_hash`` is the hex SHA-256 of it;
  ``prev_hash`` is the ``entry_hash`` of the entry before, ``GENESIS`` for the first.
- A request signature is RFC 9421 over ``"@method" "@path" "content-type" "content-digest"``
  (docs/protocol.md), an answer's over ``"@status" "content-type" "content-digest"``; the entry
  keeps the Signature-Input in its canonical form (``yp=(…);created=…;…``), so the signature base
  is rebuilt from it and the entry's fields alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ENTRY_FORMAT = "yipanqi-evidence/1"
CHECKPOINT_FORMAT = "yipanqi-evidence-checkpoint/1"
GENESIS = "0" * 64
JSON = "application/json"

# Every field of an entry that its hash covers (all but entry_hash), with the format's name.
ENTRY_FIELDS = (
    "seq",
    "kind",
    "source_id",
    "message_id",
    "message_type",
    "peer",
    "occurred_at",
    "body_digest",
    "request_keyid",
    "request_public_key",
    "request_path",
    "request_digest",
    "request_signature_input",
    "request_signature",
    "answer_status",
    "answer_content_type",
    "answer_digest",
    "answer_keyid",
    "answer_public_key",
    "answer_signature_input",
    "answer_signature",
    "sealed_at",
    "prev_hash",
)

_CREATED = re.compile(r";created=([0-9]{1,15})(?:;|$)")
_KEYID = re.compile(r';keyid="([\x20\x21\x23-\x5b\x5d-\x7e]*)"(?:;|$)')
_NONCE = re.compile(r';nonce="([\x20\x21\x23-\x5b\x5d-\x7e]*)"(?:;|$)')
_SIGNATURE = re.compile(r"yp=:([A-Za-z0-9+/]{86}==):")


def timestamp(value: datetime) -> str:
    """A time as entries and checkpoints write it."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash is taken of."""
    fields = {name: entry[name] for name in ENTRY_FIELDS}
    fields["format"] = ENTRY_FORMAT
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest (sha-256) of the body, as the protocol writes it."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


# --- signatures -------------------------------------------------------------------------------------


def signature_params(signature_input: str) -> str:
    """``@signature-params`` of a canonical Signature-Input (``yp=(…);…``)."""
    if not signature_input.startswith("yp=(") or ", " in signature_input:
        raise ValueError("not a canonical yp Signature-Input")
    return signature_input[3:]


def created_of(signature_input: str) -> datetime:
    match = _CREATED.search(signature_input)
    if match is None:
        raise ValueError("no created parameter")
    return datetime.fromtimestamp(int(match[1]), UTC)


def keyid_of(signature_input: str) -> str:
    match = _KEYID.search(signature_input)
    if match is None:
        raise ValueError("no keyid parameter")
    return match[1]


def nonce_of(signature_input: str) -> str:
    match = _NONCE.search(signature_input)
    if match is None:
        raise ValueError("no nonce parameter")
    return match[1]


def batch_items(body: bytes) -> list[bytes]:
    """The items of a batch's body (``{"items": ["…", …]}``, docs/protocol.md section 18), each the
    UTF-8 bytes of its string: the body of the message it carried. ValueError if it is not a batch."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("not UTF-8 JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ValueError('not a batch {"items": [...]}')
    # A lone surrogate (an escape) cannot be in an accepted item; kept as it is, it matches none.
    return [item.encode("utf-8", "surrogatepass") for item in data["items"] if isinstance(item, str)]


def signature_bytes(signature: str) -> bytes:
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise ValueError("not a yp signature of 64 bytes")
    return base64.b64decode(match[1])


def request_base(path: str, digest: str, signature_input: str) -> bytes:
    return (
        f'"@method": POST\n"@path": {path}\n"content-type": {JSON}\n'
        f'"content-digest": {digest}\n"@signature-params": {signature_params(signature_input)}'
    ).encode("ascii")


ANSWER_ALONE = 'yp=("@status" "content-type" "content-digest");'
# An answer bound to its request (RFC 9421 ``req``, docs/protocol.md section 6.1).
ANSWER_BOUND = (
    'yp=("@status" "content-type" "content-digest" '
    '"@path";req "content-digest";req "signature";req;key="yp");'
)


def answer_is_bound(signature_input: str) -> bool:
    return signature_input.startswith(ANSWER_BOUND)


def answer_base(
    status: int,
    content_type: str,
    digest: str,
    signature_input: str,
    request: tuple[str, str, str] | None = None,
) -> bytes:
    """The signature base of an answer; ``request``: the (path, Content-Digest, Signature) of the
    request it answers, which a bound answer covers."""
    bound = ""
    if answer_is_bound(signature_input):
        if request is None:
            raise ValueError("the answer is bound to a request that is not kept")
        path, request_digest, request_signature = request
        if not request_signature.startswith("yp="):
            raise ValueError("not a yp signature")
        bound = (
            f'"@path";req: {path}\n"content-digest";req: {request_digest}\n'
            f'"signature";req;key="yp": {request_signature[3:]}\n'
        )
    elif not signature_input.startswith(ANSWER_ALONE):
        raise ValueError("not a signature input this node writes or reads")
    return (
        f'"@status": {status}\n"content-type": {content_type}\n'
        f'"content-digest": {digest}\n{bound}"@signature-params": {signature_params(signature_input)}'
    ).encode("ascii")


def public_key(text: str) -> Ed25519PublicKey:
    """The protocol's text form of a key: base64url of the 32 raw bytes, no padding."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    return Ed25519PublicKey.from_public_bytes(raw)


def verifies(key_text: str, signature: bytes, message: bytes) -> bool:
    try:
        public_key(key_text).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- checkpoints ------------------------------------------------------------------------------------


def checkpoint_payload(*, node_id: str, seq: int, head_hash: str, signed_at: str, keyid: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    fields = {
        "format": CHECKPOINT_FORMAT,
        "node": node_id,
        "seq": seq,
        "head": head_hash,
        "signed_at": signed_at,
        "keyid": keyid,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_checkpoint(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode("ascii")
