"""The protocol's worked example, reproduced and verified by an independent RFC 9421 implementation.

``rfc9421.mjs`` (node, npm ``http-message-signatures``) shares no code with the project's signing
code. If it reproduces ``tests/vectors/verification-request.json`` (made by the project's code, see
``tests/vectors/generate.py``) byte for byte and verifies it, the vector is a faithful RFC 9421 /
RFC 9530 example that any other county's implementation can meet (docs/protocol.md).

The receipt is bound to the request it answers (RFC 9421 ``req``, docs/protocol.md section 6.1):
it is signed and verified here with that request given to the independent implementation, as in
``test_bound_responses.py``, and refused against another request or with none.
``tests/vectors/batch.json``'s answer and its results are verified the same way, bound to the
batch request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest

from tests import vectors  # the file only: no project signing code is imported here

from . import independent

pytestmark = pytest.mark.skipif(
    not independent.available(),
    reason="independent RFC 9421 implementation not installed: needs node and "
    "`(cd tests/interop && npm ci --no-audit --no-fund)`",
)


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return vectors.load()


@pytest.fixture(scope="module")
def batch_vector() -> dict[str, Any]:
    return vectors.load(vectors.BATCH)


def _bound(message: dict[str, Any]) -> independent.BoundRequest:
    """The vector's request, as the answer to it is bound to it."""
    return independent.BoundRequest(message["method"], message["path"], message["headers"])


def _param(signature_input: str, name: str) -> str:
    match = re.search(rf';{name}=("[^"]*"|\d+)', signature_input)
    assert match is not None, f"{name} missing from {signature_input}"
    return match.group(1).strip('"')


def _seed(vector: dict[str, Any], keyid: str) -> str:
    return str(vector["keys"][keyid]["private_seed_hex"])


def _public(vector: dict[str, Any], keyid: str) -> str:
    return str(vector["keys"][keyid]["public_key"])


def _sign_request(vector: dict[str, Any]) -> independent.Signed:
    req = vector["request"]
    sig_input = req["headers"]["Signature-Input"]
    keyid = _param(sig_input, "keyid")
    return independent.sign_request(
        method=req["method"],
        url=req["path"],
        headers={"Content-Type": req["headers"]["Content-Type"]},
        body=req["body"],
        private_seed_hex=_seed(vector, keyid),
        keyid=keyid,
        created=int(_param(sig_input, "created")),
        expires=int(_param(sig_input, "expires")),
        nonce=_param(sig_input, "nonce"),
    )


def _sign_response(vector: dict[str, Any]) -> independent.Signed:
    res = vector["response"]
    sig_input = res["headers"]["Signature-Input"]
    keyid = _param(sig_input, "keyid")
    return independent.sign_response(
        status=res["status"],
        headers={"Content-Type": res["headers"]["Content-Type"]},
        body=res["body"],
        private_seed_hex=_seed(vector, keyid),
        keyid=keyid,
        created=int(_param(sig_input, "created")),
        request=_bound(vector["request"]),
    )


def _verify_request(
    vector: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
    now_delta: int = 1,
) -> independent.Verdict:
    req = vector["request"]
    sig_input = req["headers"]["Signature-Input"]
    return independent.verify_request(
        method=req["method"],
        url=req["path"],
        headers=req["headers"] if headers is None else headers,
        body=req["body"] if body is None else body,
        public_key_b64url=_public(vector, _param(sig_input, "keyid")),
        now=int(_param(sig_input, "created")) + now_delta,
    )


_THE_REQUEST: Any = object()


def _verify_response(
    vector: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
    request: independent.BoundRequest | None = _THE_REQUEST,
) -> independent.Verdict:
    """The receipt checked as the answer to ``request`` (by default the vector's; None: to none)."""
    res = vector["response"]
    sig_input = res["headers"]["Signature-Input"]
    return independent.verify_response(
        status=res["status"],
        headers=res["headers"] if headers is None else headers,
        body=res["body"] if body is None else body,
        public_key_b64url=_public(vector, _param(sig_input, "keyid")),
        now=int(_param(sig_input, "created")) + 1,
        request=_bound(vector["request"]) if request is _THE_REQUEST else request,
    )


# --- reproduce the vector byte for byte ---------------------------------------------------------


@pytest.mark.parametrize("header", ["Content-Type", "Content-Digest", "Signature-Input", "Signature"])
def test_request_headers_reproduced(vector: dict[str, Any], header: str) -> None:
    signed = _sign_request(vector)
    assert signed.headers[header] == vector["request"]["headers"][header]


def test_request_signature_base_reproduced(vector: dict[str, Any]) -> None:
    assert _sign_request(vector).signature_base == vector["request"]["signature_base"]


@pytest.mark.parametrize("header", ["Content-Type", "Content-Digest", "Signature-Input", "Signature"])
def test_response_headers_reproduced(vector: dict[str, Any], header: str) -> None:
    signed = _sign_response(vector)
    assert signed.headers[header] == vector["response"]["headers"][header]


def test_response_signature_base_reproduced(vector: dict[str, Any]) -> None:
    assert _sign_response(vector).signature_base == vector["response"]["signature_base"]


# --- verify the vector messages ---------------------------------------------------------------------


def test_request_vector_verifies(vector: dict[str, Any]) -> None:
    assert _verify_request(vector) == independent.Verdict(ok=True)


def test_response_vector_verifies(vector: dict[str, Any]) -> None:
    assert _verify_response(vector) == independent.Verdict(ok=True)


def test_response_for_another_request_is_rejected(
    vector: dict[str, Any], batch_vector: dict[str, Any]
) -> None:
    """The receipt is not an answer to the batch request (another signature, path and digest)."""
    assert not _verify_response(vector, request=_bound(batch_vector["request"])).ok


def test_response_without_its_request_is_rejected(vector: dict[str, Any]) -> None:
    """Without the request, the ``req`` components cannot be computed: no verdict of validity."""
    assert not _verify_response(vector, request=None).ok


def test_unbound_response_is_rejected_for_the_request(vector: dict[str, Any]) -> None:
    """The receipt signed over the response alone (the first edition's form) is refused when the
    verifier knows the request: it must be bound."""
    res = vector["response"]
    sig_input = res["headers"]["Signature-Input"]
    unbound = independent.sign_response(
        status=res["status"],
        headers={"Content-Type": res["headers"]["Content-Type"]},
        body=res["body"],
        private_seed_hex=_seed(vector, _param(sig_input, "keyid")),
        keyid=_param(sig_input, "keyid"),
        created=int(_param(sig_input, "created")),
    )
    assert _verify_response(vector, request=None, headers=unbound.headers).ok  # a valid unbound one
    assert not _verify_response(vector, headers=unbound.headers).ok


# --- the batch example ---------------------------------------------------------------------------


def _digest(body: str) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode() + ":"


def _batch_parts(batch_vector: dict[str, Any]) -> list[tuple[int, dict[str, str], str]]:
    """The whole answer, then each result as the response it is (status, headers, body)."""
    res = batch_vector["response"]
    parts = [(res["status"], res["headers"], res["body"])]
    for result in json.loads(res["body"])["results"]:
        content_type = "application/json" if result["status"] in (200, 202) else "application/problem+json"
        headers = {
            "Content-Type": content_type,
            "Content-Digest": _digest(result["body"]),
            "Signature-Input": result["signature_input"],
            "Signature": result["signature"],
        }
        parts.append((result["status"], headers, result["body"]))
    return parts


def _verify_batch_part(
    batch_vector: dict[str, Any],
    part: tuple[int, dict[str, str], str],
    request: independent.BoundRequest | None,
) -> independent.Verdict:
    status, headers, body = part
    return independent.verify_response(
        status=status,
        headers=headers,
        body=body,
        public_key_b64url=_public(batch_vector, _param(headers["Signature-Input"], "keyid")),
        now=int(_param(headers["Signature-Input"], "created")) + 1,
        request=request,
    )


def test_batch_request_verifies(batch_vector: dict[str, Any]) -> None:
    req = batch_vector["request"]
    sig_input = req["headers"]["Signature-Input"]
    verdict = independent.verify_request(
        method=req["method"],
        url=req["path"],
        headers=req["headers"],
        body=req["body"],
        public_key_b64url=_public(batch_vector, _param(sig_input, "keyid")),
        now=int(_param(sig_input, "created")) + 1,
    )
    assert verdict == independent.Verdict(ok=True)


def test_batch_answer_signature_base_reproduced(batch_vector: dict[str, Any]) -> None:
    res = batch_vector["response"]
    sig_input = res["headers"]["Signature-Input"]
    signed = independent.sign_response(
        status=res["status"],
        headers={"Content-Type": res["headers"]["Content-Type"]},
        body=res["body"],
        private_seed_hex=_seed(batch_vector, _param(sig_input, "keyid")),
        keyid=_param(sig_input, "keyid"),
        created=int(_param(sig_input, "created")),
        request=_bound(batch_vector["request"]),
    )
    assert signed.signature_base == res["signature_base"]
    assert {k: signed.headers[k] for k in res["headers"]} == res["headers"]


def test_batch_answer_and_results_verify_bound_to_the_batch_request(batch_vector: dict[str, Any]) -> None:
    parts = _batch_parts(batch_vector)
    assert len(parts) == 1 + len(batch_vector["items"])
    for part in parts:
        assert _verify_batch_part(batch_vector, part, _bound(batch_vector["request"])) == independent.Verdict(
            ok=True
        )


def test_batch_answer_and_results_are_refused_for_another_request(
    vector: dict[str, Any], batch_vector: dict[str, Any]
) -> None:
    for part in _batch_parts(batch_vector):
        assert not _verify_batch_part(batch_vector, part, _bound(vector["request"])).ok


# --- the verifier is not vacuous: it rejects what it must ---------------------------------------


def test_request_with_changed_body_is_rejected(vector: dict[str, Any]) -> None:
    body = vector["request"]["body"].replace("411627", "411628")
    verdict = _verify_request(vector, body=body)
    assert not verdict.ok
    assert verdict.error == "Content-Digest does not match the body"


def test_request_with_changed_digest_is_rejected(vector: dict[str, Any]) -> None:
    headers = dict(vector["request"]["headers"])
    headers["Content-Digest"] = "sha-256=:" + "A" * 43 + "=:"
    assert not _verify_request(vector, headers=headers).ok


def test_request_with_changed_signature_params_is_rejected(vector: dict[str, Any]) -> None:
    headers = dict(vector["request"]["headers"])
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        "expires=1795311300", "expires=1795311299"
    )
    assert not _verify_request(vector, headers=headers).ok


def test_request_after_expiry_is_rejected(vector: dict[str, Any]) -> None:
    verdict = _verify_request(vector, now_delta=301)
    assert not verdict.ok
    assert verdict.error is not None
    assert verdict.error.startswith("ExpiredError:")


def test_response_signed_by_another_key_is_rejected(vector: dict[str, Any]) -> None:
    res = vector["response"]
    verdict = independent.verify_response(
        status=res["status"],
        headers=res["headers"],
        body=res["body"],
        public_key_b64url=_public(vector, "410105/k1"),
        now=int(_param(res["headers"]["Signature-Input"], "created")) + 1,
        request=_bound(vector["request"]),
    )
    assert verdict == independent.Verdict(ok=False, error="signature does not verify")


def test_response_with_other_status_is_rejected(vector: dict[str, Any]) -> None:
    res = vector["response"]
    verdict = independent.verify_response(
        status=200,
        headers=res["headers"],
        body=res["body"],
        public_key_b64url=_public(vector, "411627/k1"),
        now=int(_param(res["headers"]["Signature-Input"], "created")) + 1,
        request=_bound(vector["request"]),
    )
    assert not verdict.ok


def test_signature_under_another_label_is_rejected(vector: dict[str, Any]) -> None:
    headers = dict(vector["request"]["headers"])
    headers["Signature-Input"] = headers["Signature-Input"].replace("yp=", "other=", 1)
    headers["Signature"] = headers["Signature"].replace("yp=", "other=", 1)
    verdict = _verify_request(vector, headers=headers)
    assert not verdict.ok
    assert verdict.error is not None
    assert '"yp"' in verdict.error


def test_bad_command_raises() -> None:
    with pytest.raises(independent.IndependentError, match="private_seed_hex"):
        independent.sign_response(
            status=202, headers={}, body="{}", private_seed_hex="00", keyid="411627/k1", created=1
        )
