"""Answers bound to their request (RFC 9421 ``req``, docs/protocol.md section 6.1): the project's
fast path and the independent implementation (npm ``http-message-signatures``) sign the same
bytes, each accepts the other's, and both refuse an answer against another request or unbound."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.errors import SignatureInvalid
from service.signing.http import RequestBinding, sign_request, sign_response, verify_response
from service.signing.keys import public_key_text

from . import independent

pytestmark = pytest.mark.skipif(
    not independent.available(), reason="independent implementation not installed"
)

NOW = datetime(2026, 6, 10, 2, 0, 0, tzinfo=UTC)
ASKER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ANSWERER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SEED = bytes(range(32, 64)).hex()
PUBLIC = public_key_text(ANSWERER.public_key())
PATH = "/peer/v1/certificate-lookups"


def _request(message_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"message_id": message_id, "payload": {"name": "王秀英"}}, ensure_ascii=False).encode()
    return body, sign_request(method="POST", path=PATH, body=body, key=ASKER, keyid="410105/k1", created=NOW)


BODY, HEADERS = _request("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10")
_OTHER_BODY, OTHER = _request("0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11")
ANSWER = b'{"found":false}'


def _binding(headers: dict[str, str]) -> RequestBinding:
    binding = RequestBinding.of_request(PATH, headers.items())
    assert binding is not None
    return binding


def _python_verify(headers: dict[str, str], request: dict[str, str], status: int = 200) -> None:
    verify_response(
        status=status,
        headers=headers.items(),
        body=ANSWER,
        resolve_key=lambda k: ANSWERER.public_key() if k == "411627/k1" else None,
        expected_node="411627",
        now=NOW,
        request=_binding(request),
    )


def _js_verify(headers: dict[str, str], request: dict[str, str], status: int = 200) -> independent.Verdict:
    return independent.verify_response(
        status=status,
        headers=headers,
        body=ANSWER,
        public_key_b64url=PUBLIC,
        now=int(NOW.timestamp()),
        request=independent.BoundRequest("POST", PATH, request),
    )


@pytest.mark.parametrize("status", [200, 404, 500])
def test_both_sign_the_same_bound_answer_and_accept_each_others(status: int) -> None:
    content_type = "application/json" if status == 200 else "application/problem+json"
    ours = sign_response(
        status=status,
        body=ANSWER,
        key=ANSWERER,
        keyid="411627/k1",
        created=NOW,
        content_type=content_type,
        request=_binding(HEADERS),
    )
    theirs = independent.sign_response(
        status=status,
        headers={"Content-Type": content_type},
        body=ANSWER,
        private_seed_hex=SEED,
        keyid="411627/k1",
        created=int(NOW.timestamp()),
        request=independent.BoundRequest("POST", PATH, HEADERS),
    )
    assert {k: theirs.headers[k] for k in ours} == ours  # byte for byte (Ed25519 is deterministic)
    assert _js_verify(ours, HEADERS, status) == independent.Verdict(ok=True)
    _python_verify(dict(theirs.headers), HEADERS, status)


def test_both_refuse_an_answer_for_another_request_or_unbound() -> None:
    bound = sign_response(
        status=200,
        body=ANSWER,
        key=ANSWERER,
        keyid="411627/k1",
        created=NOW,
        content_type="application/json",
        request=_binding(HEADERS),
    )
    assert not _js_verify(bound, OTHER).ok
    with pytest.raises(SignatureInvalid, match="another request"):
        _python_verify(bound, OTHER)
    unbound = sign_response(
        status=200, body=ANSWER, key=ANSWERER, keyid="411627/k1", created=NOW, content_type="application/json"
    )
    assert not _js_verify(unbound, HEADERS).ok
    with pytest.raises(SignatureInvalid, match="not bound"):
        _python_verify(unbound, HEADERS)
