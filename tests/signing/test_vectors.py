"""The project's own code against the protocol's worked example, ``tests/vectors/verification-request.json``.

The committed file is exactly what ``tests/vectors/generate.py`` makes now. Beyond that, and read
from the file rather than from the generator's inputs: Ed25519 is deterministic, so the project
must reproduce the example byte for byte — the request's and the receipt's headers, the signature
bases it signs, the receipt body and its ``due_at``. The receipt is bound to the request (RFC 9421
``req``, docs/protocol.md section 6.1): the node's verifier must accept it, its clock at
``created + 1``, with the binding of the vector's request, and refuse it without one or with
another request's, and refuse every tampered copy. ``tests/vectors/batch.json``'s answer and each
of its results likewise, bound to the batch request. (``tests/interop/test_vectors_independent.py``
checks the same vector with an independent implementation; this file checks the project's code.)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.clock import clock, utcnow
from service.config import Settings
from service.errors import DigestMismatch, DomainError, SignatureExpired, SignatureInvalid, UnknownKey
from service.exchange import batch
from service.exchange.envelope import receipt_body
from service.models import Priority, Topic
from service.signing.http import (
    BOUND_RESPONSE_COMPONENTS,
    RequestBinding,
    content_digest,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)
from service.signing.keys import public_key_from_text, public_key_text
from service.sla.deadlines import DeadlineRule, due_at
from service.verification.service import deadline_rule
from tests import vectors
from tests.vectors import generate
from tests.vectors.generate import RecordingKey

HEADERS = ("Content-Type", "Content-Digest", "Signature-Input", "Signature")
ASKER, ANSWERER = "410105/k1", "411627/k1"


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return vectors.load()


def private_key(vector: dict[str, Any], keyid: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["keys"][keyid]["private_seed_hex"]))


def public_key(vector: dict[str, Any], keyid: str) -> Ed25519PublicKey:
    return public_key_from_text(vector["keys"][keyid]["public_key"])


def params(signature_input: str) -> dict[str, str]:
    """``created``, ``nonce``, … of a Signature-Input (the vector's values are simple), the
    parameters after the covered components (which have their own, ``"@path";req``)."""
    return dict(p.split("=", 1) for p in signature_input.rpartition(")")[2].split(";")[1:])


def at(params_: Mapping[str, str], name: str, delta: int = 0) -> datetime:
    return datetime.fromtimestamp(int(params_[name]) + delta, UTC)


def get(headers: Mapping[str, str], name: str) -> str:
    (value,) = [v for k, v in headers.items() if k.lower() == name.lower()]
    return value


def binding(request: Mapping[str, Any]) -> RequestBinding:
    """The binding of a vector's ``request`` (its path and headers as sent)."""
    bound = RequestBinding.of_request(request["path"], request["headers"].items())
    assert bound is not None
    return bound


def sign_vector_request(vector: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    req = vector["request"]
    p = params(req["headers"]["Signature-Input"])
    assert p["keyid"] == f'"{ASKER}"'
    return sign_request(
        method=req["method"],
        path=req["path"],
        body=req["body"].encode("utf-8"),
        key=key,
        keyid=ASKER,
        created=at(p, "created"),
        lifetime=at(p, "expires") - at(p, "created"),
        nonce=p["nonce"].strip('"'),
    )


def sign_vector_response(vector: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    res = vector["response"]
    p = params(res["headers"]["Signature-Input"])
    assert p["keyid"] == f'"{ANSWERER}"'
    return sign_response(
        status=res["status"],
        body=res["body"].encode("utf-8"),
        key=key,
        keyid=ANSWERER,
        created=at(p, "created"),
        content_type=res["headers"]["Content-Type"],
        request=binding(vector["request"]),
    )


@pytest.fixture
def frozen_clock() -> Iterator[None]:
    yield
    clock.reset()


# --- the committed file is what the generator makes now ---------------------------------------------


def test_committed_vector_is_what_the_generator_makes() -> None:
    committed = vectors.VERIFICATION_REQUEST.read_bytes()
    assert committed == generate.render(generate.build()), (
        "tests/vectors/verification-request.json differs from what the code makes now: "
        "run `python -m tests.vectors.generate` and review the difference"
    )


def test_generator_check_mode(tmp_path: Path) -> None:
    target = tmp_path / "vector.json"
    assert generate.main(["--check", "--output", str(target)]) == 1  # missing
    assert generate.main(["--output", str(target)]) == 0
    assert target.read_bytes() == vectors.VERIFICATION_REQUEST.read_bytes()
    assert generate.main(["--check", "--output", str(target)]) == 0
    target.write_bytes(target.read_bytes().replace(b"JS-2026-000123", b"JS-2026-000124"))
    assert generate.main(["--check", "--output", str(target)]) == 1


def test_generator_runs_as_a_module_from_the_repository_root() -> None:
    """What the docs tell a maintainer to run (it only reads the committed file here)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.vectors.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_vector_names_the_fixed_inputs(vector: dict[str, Any]) -> None:
    """The generator's inputs are the ones the vector's text describes (seeds 0x00.. and 0x20..)."""
    assert vector["keys"][ASKER]["private_seed_hex"] == bytes(range(32)).hex()
    assert vector["keys"][ANSWERER]["private_seed_hex"] == bytes(range(32, 64)).hex()
    assert "created + 1 (2026-11-22T01:30:01Z)" in vector["about"]


# --- the keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyid", [ASKER, ANSWERER])
def test_public_key_text_form(vector: dict[str, Any], keyid: str) -> None:
    assert public_key_text(private_key(vector, keyid).public_key()) == vector["keys"][keyid]["public_key"]


# --- reproduced byte for byte ------------------------------------------------------------------------


@pytest.mark.parametrize("header", HEADERS)
def test_request_headers_reproduced(vector: dict[str, Any], header: str) -> None:
    headers = sign_vector_request(vector, private_key(vector, ASKER))
    assert get(headers, header) == vector["request"]["headers"][header]


def test_request_has_exactly_the_vector_headers(vector: dict[str, Any]) -> None:
    headers = sign_vector_request(vector, private_key(vector, ASKER))
    assert sorted(k.lower() for k in headers) == sorted(k.lower() for k in HEADERS)


def test_request_signature_base_reproduced(vector: dict[str, Any]) -> None:
    key = RecordingKey(private_key(vector, ASKER))
    sign_vector_request(vector, key)
    assert key.signed == [vector["request"]["signature_base"].encode("ascii")]


@pytest.mark.parametrize("header", HEADERS)
def test_response_headers_reproduced(vector: dict[str, Any], header: str) -> None:
    headers = sign_vector_response(vector, private_key(vector, ANSWERER))
    assert get(headers, header) == vector["response"]["headers"][header]


def test_response_signature_base_reproduced(vector: dict[str, Any]) -> None:
    key = RecordingKey(private_key(vector, ANSWERER))
    sign_vector_response(vector, key)
    assert key.signed == [vector["response"]["signature_base"].encode("ascii")]


def test_response_is_bound_to_the_vector_request(vector: dict[str, Any]) -> None:
    """The receipt covers the six components of section 6.1, with the request's values."""
    req, res = vector["request"], vector["response"]
    covered = " ".join(c if c.startswith('"') else f'"{c}"' for c in BOUND_RESPONSE_COMPONENTS)
    assert res["headers"]["Signature-Input"].startswith(f"yp=({covered});")
    lines = res["signature_base"].split("\n")
    assert lines[3:6] == [
        f'"@path";req: {req["path"]}',
        f'"content-digest";req: {req["headers"]["Content-Digest"]}',
        f'"signature";req;key="yp": {req["headers"]["Signature"].removeprefix("yp=")}',
    ]


@pytest.mark.parametrize(("part", "keyid"), [("request", ASKER), ("response", ANSWERER)])
def test_vector_signatures_sign_the_vector_bases(vector: dict[str, Any], part: str, keyid: str) -> None:
    """The vector is self-consistent: each Signature is the Ed25519 signature of its signature_base."""
    message = vector[part]
    signature = base64.b64decode(message["headers"]["Signature"].removeprefix("yp=:").removesuffix(":"))
    public_key(vector, keyid).verify(signature, message["signature_base"].encode("ascii"))
    assert content_digest(message["body"].encode("utf-8")) == message["headers"]["Content-Digest"]


# --- the receipt: body and due_at as the node computes them ------------------------------------------


def test_receipt_body_and_due_at(vector: dict[str, Any]) -> None:
    request = json.loads(vector["request"]["body"])
    receipt = json.loads(vector["response"]["body"])
    received_at = at(params(vector["response"]["headers"]["Signature-Input"]), "created")
    # The rule a node with default settings applies to this request: normal priority, 30 calendar days.
    rule = deadline_rule(
        Settings.model_construct(),
        Topic(request["payload"]["topic"]),
        Priority(request["payload"]["priority"]),
    )
    assert rule == DeadlineRule(days=30, unit="calendar")
    body = receipt_body(
        message_id=request["message_id"],
        status="accepted",
        received_at=received_at,
        digest=vector["request"]["headers"]["Content-Digest"],
        due_at=due_at(received_at, rule),
    )
    assert body == vector["response"]["body"].encode("utf-8")
    assert receipt["received_at"] == "2026-11-22T01:30:01Z"
    assert due_at(received_at, rule) == datetime(2026, 12, 22, 16, 0, tzinfo=UTC)  # 2026-12-23 00:00 +08:00


# --- verified with the clock at created + 1 ------------------------------------------------------------


def _resolver(vector: dict[str, Any], keyid: str) -> Any:
    return lambda asked: public_key(vector, keyid) if asked == keyid else None


def verify_vector_request(
    vector: dict[str, Any],
    *,
    method: str | None = None,
    path: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    now_delta: int = 1,
    keyid: str = ASKER,
) -> Any:
    req = vector["request"]
    clock.freeze(at(params(req["headers"]["Signature-Input"]), "created", now_delta))
    return verify_request(
        method=method or req["method"],
        path=path or req["path"],
        headers=(headers or req["headers"]).items(),
        body=(req["body"] if body is None else body).encode("utf-8"),
        resolve_key=_resolver(vector, keyid),
        now=utcnow(),
    )


# The request the receipt answers, unless a test names another (or None: no binding at all).
THE_REQUEST: Any = object()


def verify_vector_response(
    vector: dict[str, Any],
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    keyid: str = ANSWERER,
    request: RequestBinding | None = THE_REQUEST,
) -> Any:
    res = vector["response"]
    clock.freeze(at(params(res["headers"]["Signature-Input"]), "created", 1))
    return verify_response(
        status=status or res["status"],
        headers=(headers or res["headers"]).items(),
        body=(res["body"] if body is None else body).encode("utf-8"),
        resolve_key=_resolver(vector, keyid),
        expected_node="411627",
        now=utcnow(),
        request=binding(vector["request"]) if request is THE_REQUEST else request,
    )


@pytest.mark.usefixtures("frozen_clock")
def test_request_vector_verifies(vector: dict[str, Any]) -> None:
    verified = verify_vector_request(vector)
    assert (verified.keyid, verified.nonce) == (ASKER, "bm9uY2UtMDAwMDAwMDAwMQ")
    assert verified.expires == datetime(2026, 11, 22, 1, 35, tzinfo=UTC)


@pytest.mark.usefixtures("frozen_clock")
def test_response_vector_verifies(vector: dict[str, Any]) -> None:
    verified = verify_vector_response(vector)
    assert verified.keyid == ANSWERER
    assert verified.bound_to == binding(vector["request"])


def _retried(vector: dict[str, Any]) -> RequestBinding:
    """The binding of the same message sent again (a retry: the same body, a new nonce)."""
    retry = {**vector["request"], "headers": dict(vector["request"]["headers"])}
    p = params(retry["headers"]["Signature-Input"])
    retry["headers"] = sign_request(
        method=retry["method"],
        path=retry["path"],
        body=retry["body"].encode("utf-8"),
        key=private_key(vector, ASKER),
        keyid=ASKER,
        created=at(p, "created"),
        lifetime=at(p, "expires") - at(p, "created"),
        nonce="bm9uY2UtMDAwMDAwMDAwOQ",
    )
    assert retry["headers"]["Content-Digest"] == vector["request"]["headers"]["Content-Digest"]
    return binding(retry)


OTHER_REQUESTS: list[Any] = [
    pytest.param(lambda _: binding(vectors.load(vectors.BATCH)["request"]), id="the-batch-request"),
    pytest.param(_retried, id="the-same-message-retried"),
    pytest.param(
        lambda v: dataclasses.replace(binding(v["request"]), path="/peer/v1/notifications"),
        id="another-path",
    ),
]


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("other", OTHER_REQUESTS)
def test_response_for_another_request_is_rejected(vector: dict[str, Any], other: Any) -> None:
    """A signed receipt cannot be replayed as the answer to another request (section 6.1)."""
    with pytest.raises(SignatureInvalid, match="another request"):
        verify_vector_response(vector, request=other(vector))


@pytest.mark.usefixtures("frozen_clock")
def test_response_without_a_binding_is_rejected(vector: dict[str, Any]) -> None:
    """Checked as an answer to no signed request, the bound receipt does not have the three
    components of an unbound one; and an unbound receipt is refused for the vector's request."""
    with pytest.raises(SignatureInvalid, match="response must cover"):
        verify_vector_response(vector, request=None)
    res = vector["response"]
    unbound = sign_response(
        status=res["status"],
        body=res["body"].encode("utf-8"),
        key=private_key(vector, ANSWERER),
        keyid=ANSWERER,
        created=at(params(res["headers"]["Signature-Input"]), "created"),
        content_type=res["headers"]["Content-Type"],
    )
    with pytest.raises(SignatureInvalid, match="not bound"):
        verify_vector_response(vector, headers=unbound)


def _replace(headers: Mapping[str, str], name: str, old: str, new: str) -> dict[str, str]:
    assert old in headers[name]
    return {**headers, name: headers[name].replace(old, new, 1)}


def _flip(signature_header: str) -> str:
    raw = bytearray(base64.b64decode(signature_header[4:-1]))
    raw[-1] ^= 0x80
    return f"yp=:{base64.b64encode(bytes(raw)).decode()}:"


REQUEST_TAMPERING: list[Any] = [
    pytest.param({"body": lambda b: b.replace("411627", "411628", 1)}, DigestMismatch, id="body"),
    pytest.param({"body": lambda b: b + " "}, DigestMismatch, id="body-trailing-space"),
    pytest.param({"method": "PUT"}, SignatureInvalid, id="method"),
    pytest.param({"path": "/peer/v1/notifications"}, SignatureInvalid, id="path"),
    pytest.param(
        {"headers": lambda h: _replace(h, "Content-Digest", "9inb", "9inc")},
        SignatureInvalid,
        id="digest-header",
    ),
    pytest.param(
        {"headers": lambda h: {**h, "Content-Type": "application/json; charset=utf-8"}},
        SignatureInvalid,
        id="content-type",
    ),
    pytest.param(
        {"headers": lambda h: _replace(h, "Signature-Input", "expires=1795311300", "expires=1795311299")},
        SignatureInvalid,
        id="expires-param",
    ),
    pytest.param(
        {"headers": lambda h: _replace(h, "Signature-Input", "MQ", "Mg")}, SignatureInvalid, id="nonce-param"
    ),
    pytest.param(
        {"headers": lambda h: {**h, "Signature": _flip(h["Signature"])}}, SignatureInvalid, id="signature"
    ),
    pytest.param({"keyid": ANSWERER}, UnknownKey, id="keyid-not-in-directory"),
    pytest.param({"now_delta": 301}, SignatureExpired, id="clock-past-expires"),
    pytest.param({"now_delta": -301}, SignatureExpired, id="clock-before-created"),
]


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(("change", "error"), REQUEST_TAMPERING)
def test_tampered_request_is_rejected(
    vector: dict[str, Any], change: dict[str, Any], error: type[DomainError]
) -> None:
    req = vector["request"]
    kwargs = dict(change)
    if "body" in kwargs:
        kwargs["body"] = kwargs["body"](req["body"])
    if "headers" in kwargs:
        kwargs["headers"] = kwargs["headers"](req["headers"])
    with pytest.raises(error):
        verify_vector_request(vector, **kwargs)


RESPONSE_TAMPERING: list[Any] = [
    pytest.param({"body": lambda b: b.replace("accepted", "duplicate")}, DigestMismatch, id="body"),
    pytest.param({"status": 200}, SignatureInvalid, id="status"),
    pytest.param(
        {"headers": lambda h: {**h, "Signature": _flip(h["Signature"])}}, SignatureInvalid, id="signature"
    ),
    pytest.param(
        {"headers": lambda h: _replace(h, "Signature-Input", "created=1795311001", "created=1795311002")},
        SignatureInvalid,
        id="created-param",
    ),
    pytest.param(
        {"headers": lambda h: _replace(h, "Content-Digest", "2N6M", "2N6N")},
        SignatureInvalid,
        id="digest-header",
    ),
    pytest.param({"keyid": ASKER}, UnknownKey, id="keyid-not-in-directory"),
]


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(("change", "error"), RESPONSE_TAMPERING)
def test_tampered_response_is_rejected(
    vector: dict[str, Any], change: dict[str, Any], error: type[DomainError]
) -> None:
    res = vector["response"]
    kwargs = dict(change)
    if "body" in kwargs:
        kwargs["body"] = kwargs["body"](res["body"])
    if "headers" in kwargs:
        kwargs["headers"] = kwargs["headers"](res["headers"])
    with pytest.raises(error):
        verify_vector_response(vector, **kwargs)


@pytest.mark.usefixtures("frozen_clock")
def test_response_signed_by_the_requesting_node_is_rejected(vector: dict[str, Any]) -> None:
    """A receipt must come from the node that was asked, even when the signer's key is trusted."""
    res = vector["response"]
    p = params(res["headers"]["Signature-Input"])
    headers = sign_response(
        status=res["status"],
        body=res["body"].encode("utf-8"),
        key=private_key(vector, ASKER),
        keyid=ASKER,
        created=at(p, "created"),
        content_type="application/json",
        request=binding(vector["request"]),
    )
    with pytest.raises(UnknownKey):
        verify_vector_response(vector, headers=headers, keyid=ASKER)


def test_recording_key_is_transparent(vector: dict[str, Any]) -> None:
    """The recording wrapper does not change what is signed (else the base tests would prove nothing)."""
    plain = sign_vector_request(vector, private_key(vector, ASKER))
    assert sign_vector_request(vector, RecordingKey(private_key(vector, ASKER))) == plain


# --- the batch example: its answer and every result bound to the batch request -----------------------


@pytest.fixture(scope="module")
def batch_vector() -> dict[str, Any]:
    return vectors.load(vectors.BATCH)


def _verify_batch_part(
    batch_vector: dict[str, Any], status: int, headers: Mapping[str, str], body: str, request: Any
) -> Any:
    p = params(headers["Signature-Input"])
    return verify_response(
        status=status,
        headers=headers.items(),
        body=body.encode("utf-8"),
        resolve_key=_resolver(batch_vector, ANSWERER),
        expected_node="411627",
        now=at(p, "created", 1),
        request=request,
    )


def _batch_parts(batch_vector: dict[str, Any]) -> list[tuple[int, dict[str, str], str]]:
    """The whole answer, then each result as the response it is (status, headers, body)."""
    res = batch_vector["response"]
    parts = [(res["status"], res["headers"], res["body"])]
    for result in json.loads(res["body"])["results"]:
        headers = {
            "Content-Type": batch.content_type_of(result["status"]),
            "Content-Digest": content_digest(result["body"].encode("utf-8")),
            "Signature-Input": result["signature_input"],
            "Signature": result["signature"],
        }
        parts.append((result["status"], headers, result["body"]))
    return parts


def test_batch_answer_and_results_verify_bound_to_the_batch_request(batch_vector: dict[str, Any]) -> None:
    bound = binding(batch_vector["request"])
    parts = _batch_parts(batch_vector)
    assert len(parts) == 1 + len(batch_vector["items"])
    for status, headers, body in parts:
        assert _verify_batch_part(batch_vector, status, headers, body, bound).bound_to == bound


def test_batch_answer_and_results_are_refused_for_another_request_or_unbound(
    vector: dict[str, Any], batch_vector: dict[str, Any]
) -> None:
    single = binding(vector["request"])
    for status, headers, body in _batch_parts(batch_vector):
        with pytest.raises(SignatureInvalid, match="another request"):
            _verify_batch_part(batch_vector, status, headers, body, single)
        with pytest.raises(SignatureInvalid, match="response must cover"):
            _verify_batch_part(batch_vector, status, headers, body, None)


def test_batch_first_result_is_the_single_receipt_answering_another_request(
    vector: dict[str, Any], batch_vector: dict[str, Any]
) -> None:
    """The same receipt and Signature-Input as verification-request.json's; not the same Signature,
    since it answers the batch request, not the single one."""
    first = json.loads(batch_vector["response"]["body"])["results"][0]
    single = vector["response"]
    assert (first["status"], first["body"], first["signature_input"]) == (
        single["status"],
        single["body"],
        single["headers"]["Signature-Input"],
    )
    assert first["signature"] != single["headers"]["Signature"]
