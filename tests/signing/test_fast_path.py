"""The fast signature path (``service.signing.http``) against the library-based implementation it
replaced (``service.signing.reference``) and the independent node.js one (``tests/interop``).

- Both ways: what the fast path signs is byte for byte what the library signs and what the
  independent implementation signs, and all three accept it; what the library and the independent
  implementation sign, the fast path accepts.
- Tampered and unusual messages (a changed body, digest, header, method, path, status; parameters
  reordered, missing, added, twice, of other types; other components; wrong alg or tag; expired,
  created in the future; another key; bad base64; other labels; duplicated and split header lines;
  white space that RFC 8941 allows and that it refuses): the fast path and the library give the
  same answer — accepted with the same result, or the same DomainError with the same detail — and
  ask ``resolve_key`` the same questions; the independent implementation accepts exactly the same
  ones wherever it checks the same thing (it has no directory, nonce or lifetime rules, and reads
  headers as a JSON object, so it cannot be sent a header twice).
- Random edits of the signature headers (hypothesis), re-signed over whatever base either side
  builds, so that a difference in reading shows.

Cases are generated from fixed seeds (``differential.py``), so a failure names a reproducible case.
The independent implementation runs all of a test's cases in one node process (``rfc9421_batch.mjs``).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.signing import http as fast
from service.signing import reference
from tests.interop import independent

from .differential import (
    MUTATIONS,
    ODD_CONTENT_TYPES,
    ODD_METHODS,
    ODD_PATHS,
    Case,
    check_independent,
    digest_forms,
    independent_verify_command,
    judge,
    make_signers,
    mutate,
    run_independent,
    signed_request,
    signed_response,
)

SIGNERS = make_signers(random.Random(8))
VALID = {"request": 500, "response": 500}
SIGNED_ELSEWHERE = {"request": 200, "response": 200}
TAMPERED = {"request": 1500, "response": 800}
ERRORS = {"SignatureMissing", "SignatureInvalid", "UnknownKey", "SignatureExpired", "DigestMismatch"}


def signed(kind: str, rng: random.Random, *, signed_by: str = "fast") -> tuple[Case, dict[str, Any]]:
    make = signed_request if kind == "request" else signed_response
    return make(rng, SIGNERS, signed_by=signed_by)


def independent_or_skip() -> None:
    if not independent.available():
        pytest.skip(
            "the comparisons with the library passed; the independent implementation is not installed "
            "(needs node and `(cd tests/interop && npm ci --no-audit --no-fund)`)"
        )


# --- the batch helper --------------------------------------------------------------------------------


def test_batch_helper_answers_as_the_script_does() -> None:
    """rfc9421_batch.mjs gives, command by command, what rfc9421.mjs gives when run once per command."""
    independent_or_skip()
    rng = random.Random(1)
    cases = [signed("request", rng)[0] for _ in range(2)] + [signed("response", rng)[0]]
    cases[0] = dataclasses.replace(cases[0], body=b"{}")  # fails the digest
    commands = [independent_verify_command(c) for c in cases]
    commands.append({**commands[0], "public_key_b64url": "not a key"})  # a usage error: exit status 2
    batch = run_independent(commands[:-1])
    singly = [independent._run(c) for c in commands[:-1]]
    assert batch == singly
    assert [a["ok"] for a in batch] == [False, True, True]
    with pytest.raises(independent.IndependentError, match="public_key_b64url"):
        independent._run(commands[-1])
    with pytest.raises(AssertionError, match="public_key_b64url"):
        run_independent(commands[-1:])


# --- both ways -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "response"])
def test_fast_path_signs_what_the_library_signs_and_all_accept_it(kind: str) -> None:
    rng = random.Random(f"valid-{kind}")
    verdicts = []
    for _ in range(VALID[kind]):
        case, inputs = signed(kind, rng)
        sign = reference.sign_request if kind == "request" else reference.sign_response
        assert list(sign(key=case.signer.private, **inputs).items()) == list(case.headers)
        assert fast.content_digest(case.body) == reference.content_digest(case.body)
        verdict = judge(case)
        assert verdict.outcome[0] == "accepted", (verdict.outcome, case)
        verdicts.append(verdict)
    independent_or_skip()
    assert check_independent(verdicts) > VALID[kind] * 0.75


@pytest.mark.parametrize("kind", ["request", "response"])
def test_what_the_library_and_the_independent_implementation_sign_the_fast_path_accepts(kind: str) -> None:
    rng = random.Random(f"elsewhere-{kind}")
    for _ in range(SIGNED_ELSEWHERE[kind]):
        case, _ = signed(kind, rng, signed_by="reference")
        assert judge(case).outcome[0] == "accepted", case
    independent_or_skip()
    cases, commands = [], []
    while len(cases) < SIGNED_ELSEWHERE[kind]:
        case, inputs = signed(kind, rng)
        if not case.interop:
            continue
        created = int(inputs["created"].timestamp())
        command = {
            "op": f"sign_{kind}",
            "headers": {"Content-Type": case.value("Content-Type")},
            "body": case.body.decode("utf-8"),
            "private_seed_hex": case.signer.seed_hex,
            "keyid": case.signer.keyid,
            "created": created,
        }
        if kind == "request":
            command.update(method=case.method, url=case.path, nonce=inputs["nonce"])
            command["expires"] = created + int(inputs["lifetime"].total_seconds())
        else:
            command["status"] = case.status
        cases.append(case)
        commands.append(command)
    for case, answer in zip(cases, run_independent(commands), strict=True):
        theirs = {k.lower(): v for k, v in answer["headers"].items()}
        assert theirs == {k.lower(): v for k, v in case.headers}, (answer, case)  # the same bytes as ours
        verdict = judge(dataclasses.replace(case, headers=tuple(answer["headers"].items())))
        assert verdict.outcome[0] == "accepted", (verdict.outcome, answer)


# --- tampered and unusual --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "response"])
def test_tampered_and_unusual_messages_get_the_same_answer(kind: str) -> None:
    rng = random.Random(f"tampered-{kind}")
    mutations = [m for m in MUTATIONS if kind in m.kinds]
    verdicts, seen = [], Counter[str]()
    for i in range(TAMPERED[kind]):
        case, _ = signed(kind, rng)
        choice = mutations[i % len(mutations)] if i < 2 * len(mutations) else rng.choice(mutations)
        verdict = judge(mutate(case, rng, choice))
        verdicts.append(verdict)
        seen[verdict.outcome[0]] += 1
    # Not vacuous: every answer occurs, and the known difference was met.
    assert set(seen) >= ERRORS | {"accepted"}, seen
    assert any(v.case.deviation for v in verdicts) == (kind == "response")
    independent_or_skip()
    assert check_independent(verdicts) > TAMPERED[kind] * 0.3


def test_every_odd_method_path_content_type_and_digest_gets_the_same_answer() -> None:
    """The fixed lists the mutations above draw from, each value once (re-signed over the base)."""
    rng = random.Random(3)
    cases: list[Case] = []
    for method in ODD_METHODS:
        cases.append(dataclasses.replace(signed("request", rng)[0], method=method))
    for path in ODD_PATHS:
        cases.append(dataclasses.replace(signed("request", rng)[0], path=path))
    for kind in ("request", "response"):
        for content_type in ODD_CONTENT_TYPES:
            cases.append(signed(kind, rng)[0].set("Content-Type", content_type))
        case = signed(kind, rng)[0]
        cases += [case.set("Content-Digest", value) for value in digest_forms(case, rng)]
    outcomes = Counter(judge(dataclasses.replace(c, resign=True, name="odd")).outcome[0] for c in cases)
    assert outcomes["accepted"] > 10, outcomes
    assert outcomes["SignatureInvalid"] > 10, outcomes


def test_the_one_known_difference() -> None:
    """A response whose expires is not a number: the library's path raised TypeError (a 500 in the
    relay); the fast path says SignatureInvalid, as it does for any other ill-typed parameter."""
    rng = random.Random(2)
    case, _ = signed("response", rng)
    params = (*case.parts.params, ("expires", '"soon"'))
    case = case.with_parts(dataclasses.replace(case.parts, params=params))
    case = dataclasses.replace(case, deviation=True, name="expires as a string")
    judge(case)  # asserts the reference's TypeError and the fast path's SignatureInvalid


# --- random edits of the headers --------------------------------------------------------------------------

_POOL = [signed("request", random.Random(f"pool-{i}"))[0] for i in range(6)]
_POOL += [signed("response", random.Random(f"pool-{i}"))[0] for i in range(6)]
_PIECES = [*' \t"();=,:*.-/?@%\\é0123456789abcdefgkmnoprstyAZ+_']
_PIECES += [";created=", '"@method"', "yp=", ", ", ";x", "::"]
_EDIT = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 400), st.sampled_from(_PIECES)
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(range(len(_POOL))),
    st.sampled_from(["Signature-Input"] * 6 + ["Signature", "Content-Digest", "Content-Type"]),
    st.lists(_EDIT, min_size=1, max_size=4),
)
def test_random_edits_of_the_headers_get_the_same_answer(
    index: int, header: str, edits: list[tuple[str, int, str]]
) -> None:
    case = _POOL[index]
    text = case.value(header)
    for op, at, piece in edits:
        at %= len(text) + 1
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + len(piece) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    judge(dataclasses.replace(case.set(header, text), name=f"edited {header}", resign=True))


# --- what cannot be signed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "keyid", "nonce"),
    [
        ("POST", "/peer/v1/notifications", "410105/k1", "bm9uY2UtMDAwMDAwMDAwMQ"),
        ("POST", "/peer/v1/x?q=1", "410105/k1", "n"),
        ("POST", "", "410105/k1", "n"),
        ("POST", "%2Fpeer/v1/x", "410105/k1", "n"),
        ("POST", '/peer/v1/"', "410105/k1", "n"),
        ("POST", "/peer/v1/%zz", "410105/k1", "n"),
        ("POST", "/peer/v1/a b", "410105/k1", "n"),
        ("post", "/peer/v1/x", "410105/k1", "n"),
        ("", "/peer/v1/x", "410105/k1", "n"),
        (" POST", "/peer/v1/x", "410105/k1", "n"),
        ("POST", "/peer/v1/x", '410105/"k1\\', "n"),
        ("POST", "/peer/v1/x", "410105/ké", "n"),
        ("POST", "/peer/v1/x", "410105/k1", "n\x00"),
        ("POST", "/peer/v1/x", "410105/k1", ""),
    ],
)
def test_requests_the_library_cannot_sign_the_fast_path_cannot_either(
    method: str, path: str, keyid: str, nonce: str
) -> None:
    """The same headers, or both refuse (the library raised its own exception, the fast path ValueError)."""
    key = SIGNERS[0].private
    inputs: dict[str, Any] = {"method": method, "path": path, "body": b"{}", "key": key, "keyid": keyid}
    inputs.update(created=datetime(2026, 11, 22, 1, 30, 0, 999_999, UTC), nonce=nonce or None)
    try:
        expected: Any = reference.sign_request(**inputs)
    except (HTTPMessageSignaturesException, ValueError):
        expected = ValueError
    try:
        got: Any = fast.sign_request(**inputs)
    except ValueError:
        got = ValueError
    if nonce == "" and expected is not ValueError:  # a new random nonce each time
        expected, got = (dict(h, **{"Signature-Input": "", "Signature": ""}) for h in (expected, got))
    assert got == expected


@pytest.mark.parametrize(
    ("status", "content_type", "created"),
    [
        (202, "application/json", 1795311001),
        (500, "application/problem+json", 0),
        (-1, " application/json ", -5),
        (200, "a\r\n b", 1),
        (200, "", 1),
        (200, "a\nb", 1),
        (200, "jsön", 1),
        (200, "x", 253402300799),
    ],
)
def test_responses_the_library_cannot_sign_the_fast_path_cannot_either(
    status: int, content_type: str, created: int
) -> None:
    inputs: dict[str, Any] = {"status": status, "body": b"", "key": SIGNERS[1].private, "keyid": "411627/k1"}
    when = datetime.fromtimestamp(0, UTC) + timedelta(seconds=created)
    inputs.update(content_type=content_type, created=when)
    try:
        expected: Any = reference.sign_response(**inputs)
    except (HTTPMessageSignaturesException, ValueError):
        expected = ValueError
    try:
        got: Any = fast.sign_response(**inputs)
    except ValueError:
        got = ValueError
    assert got == expected
