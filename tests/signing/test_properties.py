"""Property tests of the signature verifier (hypothesis, bounded so CI stays fast).

- Any single-byte change to a signed request — its path, any header's value, its body — is
  refused by ``verify_request`` with one of the protocol's errors. The one change that is the same
  request: a different character in the signature's base64 that decodes to the same 64 bytes (the
  last character's unused bits; RFC 8941 section 4.2.7 tells parsers not to fail on them) — it is
  still the same signature of the same message, and the test checks that it is.
- The same for a signed response bound to its request, and a response is refused against any
  request but its own (docs/protocol.md section 6.1).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.errors import DomainError
from service.signing.http import RequestBinding, sign_request, sign_response, verify_request, verify_response

NOW = datetime(2026, 6, 10, 2, 0, 0, tzinfo=UTC)  # a fixed instant: the signatures are fixed too
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PEER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEYID, PEER_KEYID = "410105/k1", "411627/k1"
PATH = "/peer/v1/verification-requests/0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10/reply"
BODY = json.dumps(
    {
        "message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11",
        "type": "verification.reply",
        "payload": {"n": "王秀英"},
    },
    ensure_ascii=False,
    separators=(",", ":"),
).encode("utf-8")
HEADERS = sign_request(
    method="POST", path=PATH, body=BODY, key=KEY, keyid=KEYID, created=NOW, nonce="bm9uY2Utbm9uY2Utbm9uY2U"
)
ANSWER = b'{"found":false}'
BINDING = RequestBinding.of_request(PATH, HEADERS.items())
assert BINDING is not None
ANSWER_HEADERS = sign_response(
    status=200, body=ANSWER, key=PEER_KEY, keyid=PEER_KEYID, created=NOW, content_type="application/json",
    request=BINDING,
)  # fmt: skip
PARTS = ("path", "body", *HEADERS)  # what a change can touch
BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _resolve(keyid: str) -> object:
    return {KEYID: KEY.public_key(), PEER_KEYID: PEER_KEY.public_key()}.get(keyid)


def _verify_request(path: str, headers: dict[str, str], body: bytes) -> None:
    verify_request(
        method="POST",
        path=path,
        headers=headers.items(),
        body=body,
        resolve_key=_resolve,
        now=NOW,  # type: ignore[arg-type]
    )


def _verify_answer(headers: dict[str, str], body: bytes, binding: RequestBinding | None) -> None:
    verify_response(
        status=200,
        headers=headers.items(),
        body=body,
        resolve_key=_resolve,  # type: ignore[arg-type]
        expected_node="411627",
        now=NOW,
        request=binding,
    )


def _change(data: bytes, index: int, byte: int) -> bytes:
    index %= len(data)
    if data[index] == byte:
        byte = (byte + 1) % 256
    return data[:index] + bytes([byte]) + data[index + 1 :]


def _same_signature(original: str, changed: str) -> bool:
    """Both are ``yp=:<base64>:`` of the same 64 bytes (a change in the unused bits only)."""

    def decoded(value: str) -> bytes | None:
        if not (value.startswith("yp=:") and value.endswith(":")):
            return None
        try:
            return base64.b64decode(value[4:-1], validate=True)
        except ValueError:
            return None

    return decoded(changed) is not None and decoded(changed) == decoded(original)


def test_the_unchanged_request_and_answer_verify() -> None:
    """The baseline: without a change everything verifies (else the properties prove nothing)."""
    _verify_request(PATH, HEADERS, BODY)
    _verify_answer(ANSWER_HEADERS, ANSWER, BINDING)


@BOUNDED
@given(
    part=st.sampled_from(PARTS), index=st.integers(min_value=0, max_value=10_000), byte=st.integers(0, 255)
)
@example(part="Signature", index=89, byte=ord("A"))  # the last base64 character before "=="
@example(part="Content-Digest", index=51, byte=ord("A"))  # the digest's last significant character
@example(part="body", index=0, byte=ord(" "))  # white space before the JSON: another body
def test_any_single_byte_change_to_a_signed_request_is_refused(part: str, index: int, byte: int) -> None:
    path, headers, body = PATH, dict(HEADERS), BODY
    if part == "path":
        path = _change(path.encode("latin-1"), index, byte).decode("latin-1")
    elif part == "body":
        body = _change(body, index, byte)
    else:  # a header's value, as a server gets it (latin-1: every byte is a character)
        headers[part] = _change(headers[part].encode("latin-1"), index, byte).decode("latin-1")
    try:
        _verify_request(path, headers, body)
    except DomainError:
        return
    assert part == "Signature", (part, index, byte)  # accepted: only the same signature, written otherwise
    assert _same_signature(HEADERS["Signature"], headers[part]), (index, byte)


@BOUNDED
@given(
    part=st.sampled_from(("body", *ANSWER_HEADERS)),
    index=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(0, 255),
)
def test_any_single_byte_change_to_a_bound_answer_is_refused(part: str, index: int, byte: int) -> None:
    headers, body = dict(ANSWER_HEADERS), ANSWER
    if part == "body":
        body = _change(body, index, byte)
    else:
        headers[part] = _change(headers[part].encode("latin-1"), index, byte).decode("latin-1")
    try:
        _verify_answer(headers, body, BINDING)
    except DomainError:
        return
    assert part == "Signature", (part, index, byte)
    assert _same_signature(ANSWER_HEADERS["Signature"], headers[part]), (index, byte)


@BOUNDED
@given(
    part=st.sampled_from(("path", "content_digest", "signature")),
    index=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(0x20, 0x7E),
)
def test_an_answer_verifies_only_for_its_own_request(part: str, index: int, byte: int) -> None:
    """Another request (any one of the bound values changed) does not verify the answer."""
    assert BINDING is not None
    value = getattr(BINDING, part)
    changed = _change(value.encode("ascii"), index, byte).decode("ascii")
    other = RequestBinding(**{**BINDING.__dict__, part: changed})
    with pytest.raises(DomainError):
        _verify_answer(ANSWER_HEADERS, ANSWER, other)


def test_an_answer_for_itself_alone_is_refused_when_a_binding_is_expected() -> None:
    unbound = sign_response(
        status=200, body=ANSWER, key=PEER_KEY, keyid=PEER_KEYID, created=NOW, content_type="application/json"
    )
    _verify_answer(unbound, ANSWER, None)  # fine for a caller that sent nothing signed...
    with pytest.raises(DomainError, match="not bound"):
        _verify_answer(unbound, ANSWER, BINDING)  # ...never for a sender
    with pytest.raises(DomainError):  # and a bound one is not taken as a response alone
        _verify_answer(ANSWER_HEADERS, ANSWER, None)
