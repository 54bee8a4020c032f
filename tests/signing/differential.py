"""Machinery of ``test_fast_path.py``: generated cases, both implementations run side by side, and the
independent node.js implementation run over many cases in one process.

A :class:`Case` is one received message (request or response) with the directory that judges it
(one known keyid and its key) and the receiver's clock. :func:`judge` runs it through
``service.signing.http`` (the fast path) and ``service.signing.reference`` (the library-based
implementation it replaced), each with a :class:`RecordingPublicKey`, so that every signature base
either one verifies is seen; when both build one they must be the same bytes. A case made to be
re-signed is then signed again over the base that was built, and judged again: a header the two
read differently then shows as "one accepts, the other refuses", not as two refusals of a stale
signature.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.errors import DomainError
from service.signing import http as fast
from service.signing import reference
from service.signing.keys import b64url, public_key_text
from tests.interop import independent

BATCH_SCRIPT = independent.HERE / "rfc9421_batch.mjs"
BASE_TIME = 1795311000  # the worked example's created (2026-11-22T01:30:00Z)
ENDPOINTS = (
    "/peer/v1/verification-requests",
    "/peer/v1/notifications",
    "/peer/v1/certificate-lookups",
    "/peer/v1/batch",
)
STATUSES = (200, 202, 400, 401, 403, 404, 405, 409, 413, 415, 422, 500)
TEXT = '王秀英太康县金水区婚育证明查验协查通报abcdefghijklmnopqrstuvwxyz0123456789 "\\/\n\t{}[]:,é€😀'


# --- keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    keyid: str
    private: Ed25519PrivateKey
    seed_hex: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_text(self) -> str:
        return public_key_text(self.public)

    @property
    def node(self) -> str:
        return self.keyid.split("/", 1)[0]


def random_keyid(rng: random.Random) -> str:
    node = f"{rng.randint(1, 9)}{rng.randint(0, 99999):05d}"
    if rng.random() < 0.05:  # still signable: any printable ASCII, escaped as a structured-field string
        return rng.choice([f'{node}/k"1', f"{node}/k\\1", f"{node}/k 1", f"{node}/~"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
    return f"{node}/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 32)))


def make_signers(rng: random.Random, n: int = 6) -> list[Signer]:
    signers = []
    for _ in range(n):
        seed = rng.randbytes(32)
        signers.append(Signer(random_keyid(rng), Ed25519PrivateKey.from_private_bytes(seed), seed.hex()))
    return signers


class RecordingPublicKey(Ed25519PublicKey):
    """An Ed25519 public key that remembers what it was asked to verify: the signature base."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.bases: list[bytes] = []

    def verify(self, signature: Any, data: Any) -> None:
        self.bases.append(bytes(data))
        self._key.verify(signature, data)

    def public_bytes(self, encoding: serialization.Encoding, format: serialization.PublicFormat) -> bytes:
        return self._key.public_bytes(encoding, format)

    def public_bytes_raw(self) -> bytes:
        return self._key.public_bytes_raw()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordingPublicKey) and self._key == other._key

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> RecordingPublicKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RecordingPublicKey:
        return self


# --- cases -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """A Signature-Input member as text pieces: label, serialized items, serialized parameters."""

    items: tuple[str, ...]
    params: tuple[tuple[str, str | None], ...]  # (name, serialized value); None: a bare (true) flag
    label: str = fast.LABEL

    def render(self) -> str:
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"{self.label}=({' '.join(self.items)}){params}"

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)

    def with_param(self, name: str, value: str | None) -> Parts:
        return dataclasses.replace(self, params=tuple((k, value if k == name else v) for k, v in self.params))

    def without(self, name: str) -> Parts:
        return dataclasses.replace(self, params=tuple((k, v) for k, v in self.params if k != name))


@dataclass(frozen=True)
class Case:
    kind: str  # "request" or "response"
    name: str  # how it was made: "valid", or the mutation
    signer: Signer  # the key the directory holds for known_keyid
    known_keyid: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    now: datetime
    parts: Parts  # what the Signature-Input was made from (before any mutation of the text)
    signature: bytes  # the signature made when signing (64 bytes)
    method: str = "POST"
    path: str = ""
    status: int = 0
    interop: bool = True  # the independent implementation must agree on accept / refuse
    resign: bool = False  # sign again over the base that was built, then judge
    deviation: bool = False  # the one known difference (a response's non-numeric expires)

    def value(self, name: str) -> str:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) == 1, (name, self.headers)
        return values[0]

    def set(self, name: str, value: str | None) -> Case:
        """Replace every line of ``name`` by one (at the first one's place), or drop them (None)."""
        out: list[tuple[str, str]] = []
        done = False
        for k, v in self.headers:
            if k.lower() != name.lower():
                out.append((k, v))
            elif value is not None and not done:
                out.append((k, value))
                done = True
        if value is not None and not done:
            out.append((name, value))
        return dataclasses.replace(self, headers=tuple(out))

    def with_parts(self, parts: Parts) -> Case:
        return self.set("Signature-Input", parts.render())


def random_body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.04:
        return b""
    if roll < 0.08:
        return rng.randbytes(rng.randint(1, 300))  # not UTF-8 (the independent side takes text only)
    obj = {
        "message_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "type": rng.choice(["verification.request", "notification", "certificate.lookup"]),
        "payload": {
            "question": "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 400))),
            "n": rng.randint(-(10**12), 10**12),
        },
    }
    if rng.random() < 0.1:
        obj["payload"]["blob"] = "x" * rng.randint(1000, 20000)
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3, separators=(",", ":")).encode("utf-8")


def random_path(rng: random.Random) -> tuple[str, bool]:
    """A request path a node could be sent to, and whether the independent side reads it the same."""
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(ENDPOINTS), True
    if roll < 0.92:
        kind = rng.choice(["verification-requests", "notifications"])
        return f"/peer/v1/{kind}/{uuid.UUID(int=rng.getrandbits(128))}/{rng.choice(['ack', 'reply'])}", True
    odd = rng.choice(["%E5%A4%AA%E5%BA%B7", "%e5%a4%aa", "a;b=c", "x:y@z", "~me", "!$&'()*+,", "", "a//b"])
    return "/peer/v1/" + odd, False


def random_created(rng: random.Random) -> datetime:
    return datetime.fromtimestamp(BASE_TIME + rng.randint(-(10**7), 10**7) + rng.random(), UTC)


def _parts_of(signature_input: str) -> Parts:
    """Parts of a Signature-Input in the form the signers write (no escapes in strings)."""
    head, _, rest = signature_input.partition(")")
    label, _, items = head.partition("=(")
    params = []
    for piece in rest.split(";")[1:]:
        name, _, value = piece.partition("=")
        params.append((name, value))
    return Parts(tuple(items.split(" ")), tuple(params), label)


def _signature_bytes(header: str) -> bytes:
    return base64.b64decode(header[len("yp=:") : -1])


def signed_request(
    rng: random.Random, signers: Sequence[Signer], *, signed_by: str = "fast"
) -> tuple[Case, dict[str, Any]]:
    """A valid request signed by ``fast`` or ``reference``, and the inputs it was signed from."""
    signer = rng.choice(signers)
    path, interop_path = random_path(rng)
    body = random_body(rng)
    created = random_created(rng)
    lifetime = rng.choice([300, rng.randint(2, 300)])
    nonce = b64url(rng.randbytes(rng.randint(16, 96)))
    inputs = {
        "method": "POST",
        "path": path,
        "body": body,
        "keyid": signer.keyid,
        "created": created,
        "lifetime": timedelta(seconds=lifetime),
        "nonce": nonce,
    }
    impl = fast if signed_by == "fast" else reference
    headers = impl.sign_request(key=signer.private, **inputs)
    created_s = int(created.timestamp())
    now = datetime.fromtimestamp(rng.uniform(created_s - 290, created_s + lifetime - 2), UTC)
    case = Case(
        kind="request",
        name="valid",
        signer=signer,
        known_keyid=signer.keyid,
        body=body,
        headers=tuple(headers.items()),
        now=now,
        parts=_parts_of(headers["Signature-Input"]),
        signature=_signature_bytes(headers["Signature"]),
        path=path,
        interop=interop_path and _is_utf8(body),
    )
    return case, inputs


def signed_response(
    rng: random.Random, signers: Sequence[Signer], *, signed_by: str = "fast"
) -> tuple[Case, dict[str, Any]]:
    signer = rng.choice(signers)
    body = random_body(rng)
    created = random_created(rng)
    status = rng.choice(STATUSES)
    inputs = {
        "status": status,
        "body": body,
        "keyid": signer.keyid,
        "created": created,
        "content_type": fast.JSON if status < 300 else "application/problem+json",
    }
    impl = fast if signed_by == "fast" else reference
    headers = impl.sign_response(key=signer.private, **inputs)
    created_s = int(created.timestamp())
    case = Case(
        kind="response",
        name="valid",
        signer=signer,
        known_keyid=signer.keyid,
        body=body,
        headers=tuple(headers.items()),
        now=datetime.fromtimestamp(rng.uniform(created_s - 290, created_s + 290), UTC),
        parts=_parts_of(headers["Signature-Input"]),
        signature=_signature_bytes(headers["Signature"]),
        status=status,
        interop=_is_utf8(body),
    )
    return case, inputs


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- judging -----------------------------------------------------------------------------------------

Outcome = tuple[Any, ...]


@dataclass
class Run:
    outcome: Outcome  # ("accepted", fields of VerifiedSignature) or (error class name, detail)
    bases: list[bytes]
    asked: list[str]  # the keyids resolve_key was asked for


def run(impl: Any, case: Case) -> Run:
    key = RecordingPublicKey(case.signer.public)
    asked: list[str] = []

    def resolve(keyid: str) -> Ed25519PublicKey | None:
        asked.append(keyid)
        return key if keyid == case.known_keyid else None

    try:
        if case.kind == "request":
            result = impl.verify_request(
                method=case.method,
                path=case.path,
                headers=iter(case.headers),
                body=case.body,
                resolve_key=resolve,
                now=case.now,
            )
        else:
            result = impl.verify_response(
                status=case.status,
                headers=iter(case.headers),
                body=case.body,
                resolve_key=resolve,
                expected_node=case.signer.node,
                now=case.now,
            )
    except DomainError as exc:
        return Run((type(exc).__name__, exc.detail), key.bases, asked)
    except (
        TypeError
    ) as exc:  # the reference, on a response's non-numeric expires (see service/signing/http.py)
        return Run(("TypeError", str(exc)), key.bases, asked)
    # The reference's fields (the fast path's result also says which request a response is bound to).
    fields = [f.name for f in dataclasses.fields(reference.VerifiedSignature)]
    return Run(("accepted", *(getattr(result, name) for name in fields)), key.bases, asked)


def resigned(case: Case, base: bytes) -> Case:
    """The case with its signature replaced by one over ``base`` (wherever the old one's text is)."""
    old = base64.b64encode(case.signature).decode("ascii")[:86]
    new_signature = case.signer.private.sign(base)
    new = base64.b64encode(new_signature).decode("ascii")[:86]
    headers = tuple((k, v.replace(old, new) if k.lower() == "signature" else v) for k, v in case.headers)
    return dataclasses.replace(case, headers=headers, signature=new_signature, resign=False)


@dataclass
class Verdict:
    case: Case  # as finally judged (re-signed if it was to be)
    outcome: Outcome


def judge(case: Case) -> Verdict:
    """Fast path and reference on one case; AssertionError naming the case if they differ."""
    ref, quick = run(reference, case), run(fast, case)
    if ref.bases and quick.bases:
        assert ref.bases == quick.bases, f"{case.name}: different signature bases\n{ref.bases}\n{quick.bases}"
    if case.resign and (ref.bases or quick.bases):
        case = resigned(case, (ref.bases or quick.bases)[0])
        ref, quick = run(reference, case), run(fast, case)
        if ref.bases and quick.bases:
            assert ref.bases == quick.bases, f"{case.name}: different bases\n{ref.bases}\n{quick.bases}"
    if case.deviation:
        assert ref.outcome[0] == "TypeError", (case.name, ref.outcome, case.headers)
        assert quick.outcome == ("SignatureInvalid", "expires must be an integer"), (case.name, quick.outcome)
    else:
        assert quick.outcome == ref.outcome, (
            f"{case.name}: fast {quick.outcome} / reference {ref.outcome}\n{case}"
        )
    assert quick.asked == ref.asked, f"{case.name}: resolve_key asked {quick.asked} / {ref.asked}"
    return Verdict(case, quick.outcome)


# --- the independent implementation, many commands in one process ------------------------------------


def run_independent(commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run rfc9421.mjs's commands through rfc9421_batch.mjs: one answer (its JSON) per command."""
    if not commands:
        return []
    proc = subprocess.run(
        ["node", str(BATCH_SCRIPT)],
        input=json.dumps(list(commands)),
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=independent.HERE,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert len(results) == len(commands)
    for command, result in zip(commands, results, strict=True):
        assert result["status"] == 0, (command, result)
    return [r["answer"] for r in results]


def independent_verify_command(case: Case) -> dict[str, Any]:
    headers = dict(case.headers)
    assert len({k.lower() for k in headers}) == len(case.headers), case.headers
    command: dict[str, Any] = {
        "headers": headers,
        "body": case.body.decode("utf-8"),
        "public_key_b64url": case.signer.public_text,
        "now": int(case.now.timestamp()),
    }
    if case.kind == "request":
        return {"op": "verify_request", "method": case.method, "url": case.path, **command}
    return {"op": "verify_response", "status": case.status, **command}


def interop_comparable(case: Case) -> bool:
    names = [k.lower() for k, _ in case.headers]
    return (
        case.interop
        and _is_utf8(case.body)
        and len(set(names)) == len(names)
        and (case.kind == "response" or case.path.startswith("/"))
    )


def check_independent(verdicts: Sequence[Verdict]) -> int:
    """The independent implementation accepts exactly the comparable cases that were accepted."""
    comparable = [v for v in verdicts if interop_comparable(v.case)]
    answers = run_independent([independent_verify_command(v.case) for v in comparable])
    wrong = [
        (v.case.name, v.outcome, answer)
        for v, answer in zip(comparable, answers, strict=True)
        if (answer["ok"] is True) != (v.outcome[0] == "accepted")
    ]
    assert not wrong, f"{len(wrong)} disagreements with the independent implementation, e.g. {wrong[:5]}"
    return len(comparable)


# --- mutations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    name: str
    apply: Callable[[Case, random.Random], Case]
    kinds: frozenset[str]
    interop: bool  # the independent implementation checks the same thing: it must agree
    resign: bool  # re-sign over the base that was built (else the signature stays the original one)


MUTATIONS: list[Mutation] = []


def mutation(
    name: str, *, kinds: Sequence[str] = ("request", "response"), interop: bool = True, resign: bool = False
) -> Callable[[Callable[[Case, random.Random], Case]], Callable[[Case, random.Random], Case]]:
    def register(fn: Callable[[Case, random.Random], Case]) -> Callable[[Case, random.Random], Case]:
        MUTATIONS.append(Mutation(name, fn, frozenset(kinds), interop, resign))
        return fn

    return register


def mutate(case: Case, rng: random.Random, choice: Mutation) -> Case:
    changed = choice.apply(case, rng)
    return dataclasses.replace(
        changed,
        name=choice.name,
        interop=case.interop and changed.interop and choice.interop,
        resign=choice.resign or changed.resign,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _replace_header_text(case: Case, name: str, old: str, new: str) -> Case:
    value = case.value(name)
    assert old in value, (old, value)
    return case.set(name, value.replace(old, new, 1))


def _created(case: Case) -> int:
    return int(case.parts.param("created") or 0)


def _other_member(case: Case, rng: random.Random) -> tuple[str, str]:
    """Another, well-formed signature: (its Signature-Input member, its Signature member)."""
    first = '"@status"' if case.kind == "response" else '"@method"'
    label = rng.choice(["sig1", "other", "a", "yq", "y-p"])
    member = f'{label}=({first} "content-type");created={_created(case)};keyid="x/y";alg="ed25519"'
    return member, f"{label}=:{_b64(rng.randbytes(64))}:"


# body and Content-Digest


@mutation("body changed")
def _body_changed(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, body=c.body + rng.choice([b" ", b"\n", b"0", b"}"]))


@mutation("body emptied or truncated")
def _body_truncated(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, body=c.body[: rng.randint(0, max(0, len(c.body) - 1))] if c.body else b"{}")


@mutation("digest of another body")
def _digest_other(c: Case, _rng: random.Random) -> Case:
    return c.set("Content-Digest", fast.content_digest(c.body + b"x"))


@mutation("digest of another body, re-signed", resign=True)
def _digest_other_resigned(c: Case, rng: random.Random) -> Case:
    return _digest_other(c, rng)


@mutation("digest with another algorithm too, re-signed", resign=True)
def _digest_two(c: Case, rng: random.Random) -> Case:
    other = f"sha-512=:{_b64(hashlib.sha512(c.body).digest())}:"
    own = c.value("Content-Digest")
    return c.set("Content-Digest", rng.choice([f"{other}, {own}", f"{own}, {other}", f"{own},{other}"]))


def digest_forms(c: Case, rng: random.Random) -> list[str]:
    """Content-Digest values other than the one written for the body: some match it, some do not."""
    own = c.value("Content-Digest")
    raw = _b64(hashlib.sha256(c.body).digest())
    return [
        f"sha-256=:{raw.rstrip('=')}:",  # no padding: RFC 8941 readers should take it
        f"{own};x=1",
        f"sha-256=(:{raw}:)",
        f"SHA-256=:{raw}:",
        f"md5=:{raw}:",
        "sha-256=:!!:",
        "sha-256",
        "",
        f"  {own}\t",
        f"{own}, {own}",
        f"sha-256=:{_b64(rng.randbytes(32))}:, {own}",
        f"{own}, sha-256=:{_b64(rng.randbytes(32))}:",
        f"sha-256=:{raw}",
        f"sha-256=:{raw}:é",
        f"sha-256=?1, {own}",
    ]


@mutation("digest in another form, re-signed", interop=False, resign=True)
def _digest_forms(c: Case, rng: random.Random) -> Case:
    return c.set("Content-Digest", rng.choice(digest_forms(c, rng)))


@mutation("digest missing")
def _digest_missing(c: Case, _rng: random.Random) -> Case:
    return c.set("Content-Digest", None)


@mutation("digest duplicated, re-signed", interop=False, resign=True)
def _digest_twice(c: Case, _rng: random.Random) -> Case:
    return dataclasses.replace(c, headers=(*c.headers, ("content-digest", c.value("Content-Digest"))))


# Content-Type


@mutation("content type changed")
def _type_changed(c: Case, rng: random.Random) -> Case:
    value = rng.choice(
        ["application/json; charset=utf-8", "text/plain", "application/problem+json", "APPLICATION/JSON"]
    )
    return c.set("Content-Type", value if value != c.value("Content-Type") else "application/xml")


@mutation("content type changed, re-signed", resign=True)
def _type_changed_resigned(c: Case, rng: random.Random) -> Case:
    return _type_changed(c, rng)


@mutation("content type padded with white space")
def _type_padded(c: Case, rng: random.Random) -> Case:
    value = c.value("Content-Type")
    return c.set("Content-Type", rng.choice([f" {value}", f"{value} ", f"\t{value}\t", f"  {value}  "]))


@mutation("content type missing")
def _type_missing(c: Case, _rng: random.Random) -> Case:
    return c.set("Content-Type", None)


@mutation("content type duplicated, re-signed", interop=False, resign=True)
def _type_twice(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(
        c, headers=(*c.headers, ("Content-Type", rng.choice(["application/json", "x"])))
    )


ODD_CONTENT_TYPES = (
    "application/json\x00",
    "application/\x7fjson",
    "application/jsön",
    "a\r\n b",
    "a \r\n\tb",
    "a\r\n",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x0bb",
    "",
    " ",
    "a\u00a0b",
)


@mutation("content type with odd characters, re-signed", interop=False, resign=True)
def _type_odd(c: Case, rng: random.Random) -> Case:
    return c.set("Content-Type", rng.choice(ODD_CONTENT_TYPES))


# header names and order


@mutation("header names in lower or upper case")
def _names_case(c: Case, rng: random.Random) -> Case:
    change = rng.choice([str.lower, str.upper, str.title])
    return dataclasses.replace(c, headers=tuple((change(k), v) for k, v in c.headers))


@mutation("headers shuffled, others added")
def _shuffled(c: Case, rng: random.Random) -> Case:
    headers = [*c.headers, ("Date", "Sun, 22 Nov 2026 01:30:00 GMT"), ("X-Request-Id", str(uuid.uuid4()))]
    headers += [("Content-Length", str(len(c.body)))] if rng.random() < 0.5 else []
    rng.shuffle(headers)
    return dataclasses.replace(c, headers=tuple(headers))


# method and path


@mutation("method changed", kinds=("request",))
def _method_changed(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, method=rng.choice(["PUT", "GET", "PATCH", "DELETE"]))


ODD_METHODS = (
    "post",
    "Post",
    "",
    " POST",
    "POST ",
    "PO ST",
    "PÖST",
    "POST\t",
    "P\x00",
    "POST\n",
    "ÄÖ",
    "ß",
    "M-SEARCH",
)


@mutation("method in an odd form, re-signed", kinds=("request",), interop=False, resign=True)
def _method_odd(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, method=rng.choice(ODD_METHODS))


@mutation("path changed", kinds=("request",))
def _path_changed(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, path=rng.choice([p for p in ENDPOINTS if p != c.path]))


@mutation("path changed, re-signed", kinds=("request",), resign=True)
def _path_changed_resigned(c: Case, rng: random.Random) -> Case:
    return _path_changed(c, rng)


ODD_PATHS = (
    "/peer/v1/x?q=1",
    "/peer/v1/x#f",
    "/peer/v1/x?q#f",
    "/peer/v1/%zz",
    "/peer/v1/%4",
    "%2Fpeer/v1/x",
    "/peer/v1/a b",
    "/peer/v1/é",
    "",
    "peer",
    "?x",
    "#x",
    "/peer//v1",
    "/peer/v1/./x",
    "/peer/v1/../x",
    "@[::1]/x",
    "@[::zz]/x",
    "@[1:2:3]/x",
    "@[::1::]/x",
    "@[::ffff:1.2.3.4]/x",
    "@[v1.x]/y",
    "@[fe80::1%25eth0]/z",
    ":8080/x",
    ":/x",
    "//host/x",
    "/peer/v1/%E4%B8%AD",
    "/peer/v1/[x]",
    '/peer/v1/x"y',
    "/peer/v1/{}",
    "@evil.example/x",
    "a@b:1/x?y#z",
    "/\x00",
    "/x\\y",
    "*",
    "http://other/x",
)


@mutation("path in an odd form, re-signed", kinds=("request",), interop=False, resign=True)
def _path_odd(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, path=rng.choice(ODD_PATHS))


@mutation("status changed", kinds=("response",))
def _status_changed(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, status=rng.choice([s for s in STATUSES if s != c.status]))


# Signature-Input: parameters


@mutation("parameters reordered")
def _params_reordered(c: Case, rng: random.Random) -> Case:
    params = list(c.parts.params)
    while params == list(c.parts.params):
        rng.shuffle(params)
    return c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))


@mutation("parameters reordered, re-signed", resign=True)
def _params_reordered_resigned(c: Case, rng: random.Random) -> Case:
    return _params_reordered(c, rng)


@mutation("parameter missing", resign=True)
def _param_missing(c: Case, rng: random.Random) -> Case:
    return c.with_parts(c.parts.without(rng.choice(c.parts.params)[0]))


@mutation("parameter added, re-signed", interop=False, resign=True)
def _param_added(c: Case, rng: random.Random) -> Case:
    extra = rng.choice(
        [("foo", "1"), ("context", '"x"'), ("req", None), ("sf", None), ("nonce", '"AAAAAAAAAAAAAAAAAAAAAA"')]
    )
    if c.parts.param(extra[0]) is not None:
        extra = ("zz", "?0")
    params = list(c.parts.params)
    params.insert(rng.randint(0, len(params)), extra)
    return c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))


@mutation("parameter twice, re-signed", interop=False, resign=True)
def _param_twice(c: Case, rng: random.Random) -> Case:
    name, value = rng.choice(c.parts.params)
    again = rng.choice([value, str(_created(c) + 1), '"x"', '"yipanqi/1"', '"ed25519"', value])
    params = list(c.parts.params)
    params.insert(rng.randint(0, len(params)), (name, again))
    return c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))


@mutation("integer with leading zeros")
def _leading_zeros(c: Case, rng: random.Random) -> Case:
    name = rng.choice([k for k, _ in c.parts.params if k in ("created", "expires")])
    value = c.parts.param(name) or ""
    return c.with_parts(c.parts.with_param(name, "0" * rng.randint(1, 15 - len(value)) + value))


@mutation("parameter of another type, re-signed", interop=False, resign=True)
def _param_type(c: Case, rng: random.Random) -> Case:
    name = rng.choice(c.parts.params)[0]
    value = c.parts.param(name) or ""
    plain = value.strip('"')
    odd = {
        "created": [
            f"{value}.0",
            f'"{value}"',
            "?1",
            None,
            ":AAAA:",
            f"@{value}",
            f"-{value}",
            "1" * 16,
            "0",
        ],
        "expires": [f"{value}.5", f'"{value}"', "?1", None, f"@{value}", "-1"],
    }.get(
        name,
        [
            plain if plain[:1].isalpha() else f"a{plain}",
            ":AAAA:",
            f'%"{plain}"',
            "1",
            "?1",
            None,
            f'"{plain}"',
        ],
    )
    return c.with_parts(c.parts.with_param(name, rng.choice(odd)))


@mutation("alg not ed25519")
def _alg_wrong(c: Case, rng: random.Random) -> Case:
    return c.with_parts(
        c.parts.with_param("alg", rng.choice(['"rsa-pss-sha512"', '"ED25519"', '"hmac-sha256"', '""']))
    )


@mutation("alg as a token, re-signed", interop=False, resign=True)
def _alg_token(c: Case, _rng: random.Random) -> Case:
    return c.with_parts(c.parts.with_param("alg", "ed25519"))


@mutation("tag not yipanqi/1")
def _tag_wrong(c: Case, rng: random.Random) -> Case:
    return c.with_parts(
        c.parts.with_param("tag", rng.choice(['"yipanqi/2"', '""', '"YIPANQI/1"', '"yipanqi/1 "']))
    )


@mutation("tag as a token, re-signed", interop=False, resign=True)
def _tag_token(c: Case, _rng: random.Random) -> Case:
    return c.with_parts(c.parts.with_param("tag", "yipanqi/1"))


@mutation("nonce in another form, re-signed", kinds=("request",), interop=False, resign=True)
def _nonce_odd(c: Case, rng: random.Random) -> Case:
    forms = [
        b64url(rng.randbytes(15)),
        b64url(rng.randbytes(97)),
        b64url(rng.randbytes(96)),
        b64url(rng.randbytes(16)),
        _b64(rng.randbytes(18)),
        _b64(rng.randbytes(17)),
        b64url(rng.randbytes(18)) + "=",
        "",
        "A" * 21,
        "A" * 22,
        "A" * 129,
        "AAAAAAAAAAAAAAAAAAAAA!",
        "AAAAAAAAAAAAAAAAAAAAA\\\\",
    ]
    return c.with_parts(c.parts.with_param("nonce", f'"{rng.choice(forms)}"'))


@mutation("keyid not in the directory", interop=False)
def _keyid_unknown(c: Case, rng: random.Random) -> Case:
    return dataclasses.replace(c, known_keyid=c.known_keyid + rng.choice(["x", "/", ".1"]))


@mutation("keyid of another node", interop=False, resign=True)
def _keyid_other_node(c: Case, rng: random.Random) -> Case:
    keyid = random_keyid(rng)
    changed = c.with_parts(c.parts.with_param("keyid", fast._sf_string(keyid)))
    return dataclasses.replace(changed, known_keyid=keyid)


@mutation("keyid written with escapes, re-signed", interop=False, resign=True)
def _keyid_escaped(c: Case, rng: random.Random) -> Case:
    keyid = rng.choice([c.known_keyid + '"', c.known_keyid + "\\", '"' + c.known_keyid])
    changed = c.with_parts(c.parts.with_param("keyid", fast._sf_string(keyid)))
    return dataclasses.replace(changed, known_keyid=rng.choice([keyid, c.known_keyid]))


# Signature-Input: components


def _with_items(c: Case, items: list[str]) -> Case:
    return c.with_parts(dataclasses.replace(c.parts, items=tuple(items)))


@mutation("components reordered, re-signed", interop=False, resign=True)
def _components_reordered(c: Case, rng: random.Random) -> Case:
    items = list(c.parts.items)
    while items == list(c.parts.items):
        rng.shuffle(items)
    return _with_items(c, items)


@mutation("component added, re-signed", interop=False, resign=True)
def _component_added(c: Case, rng: random.Random) -> Case:
    items = list(c.parts.items)
    extra = [
        '"@authority"',
        '"date"',
        '"@query"',
        '"content-length"',
        '"@status"',
        '"@method"',
        '"content-type"',
    ]
    items.insert(rng.randint(0, len(items)), rng.choice(extra))
    return _with_items(c, items)


@mutation("component dropped, re-signed", interop=False, resign=True)
def _component_dropped(c: Case, rng: random.Random) -> Case:
    items = list(c.parts.items)
    del items[rng.randrange(len(items))]
    return _with_items(c, items)


@mutation("component in another form, re-signed", interop=False, resign=True)
def _component_form(c: Case, rng: random.Random) -> Case:
    items = list(c.parts.items)
    i = rng.randrange(len(items))
    name = items[i].strip('"')
    forms = [
        f"{name}",
        f'"{name}";sf',
        f'"{name}";key="sha-256"',
        f'"{name}";bs',
        f'"{name}";req',
        f'"{name}";x=1',
    ]
    forms += [
        f'"{name.upper()}"',
        f'"{name} "',
        f'"{name}";sf=?0',
        f"@{name}" if not name.startswith("@") else name[1:],
    ]
    items[i] = rng.choice(forms)
    return _with_items(c, items)


# the clock


@mutation("clock past expires", kinds=("request",))
def _past_expires(c: Case, rng: random.Random) -> Case:
    expires = int(c.parts.param("expires") or 0)
    return dataclasses.replace(c, now=datetime.fromtimestamp(expires + rng.uniform(1, 200), UTC))


@mutation("clock far from created")
def _clock_far(c: Case, rng: random.Random) -> Case:
    offset = rng.choice([1, -1]) * rng.uniform(302, 10**6)
    return dataclasses.replace(c, now=datetime.fromtimestamp(_created(c) + offset, UTC))


@mutation("clock at the window's edges", interop=False)
def _clock_edges(c: Case, rng: random.Random) -> Case:
    points = [_created(c) + d for d in (-301, -300.5, -300, -299.999, 299.999, 300, 300.001, 301)]
    if c.kind == "request":
        expires = int(c.parts.param("expires") or 0)
        points += [expires - 0.001, expires, expires + 0.001]
    return dataclasses.replace(c, now=datetime.fromtimestamp(rng.choice(points), UTC))


@mutation("expires out of bounds, re-signed", kinds=("request",), interop=False, resign=True)
def _expires_bounds(c: Case, rng: random.Random) -> Case:
    created = _created(c)
    expires = rng.choice([created + 301, created + 10**6, created, created - 1, created + 300, created + 1])
    return c.with_parts(c.parts.with_param("expires", str(expires)))


@mutation("created moved, re-signed", interop=False, resign=True)
def _created_moved(c: Case, rng: random.Random) -> Case:
    return c.with_parts(c.parts.with_param("created", str(_created(c) + rng.randint(-400, 400))))


@mutation("expires added to a response, re-signed", kinds=("response",), interop=False, resign=True)
def _response_expires(c: Case, rng: random.Random) -> Case:
    now = int(c.now.timestamp())
    expires = rng.choice([now + 1, now + 100, now - 1, now, _created(c) + 300, _created(c) + 301])
    params = list(c.parts.params)
    params.insert(rng.randint(0, len(params)), ("expires", str(expires)))
    return c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))


@mutation("nonce added to a response, re-signed", kinds=("response",), resign=True)
def _response_nonce(c: Case, rng: random.Random) -> Case:
    params = list(c.parts.params)
    params.insert(rng.randint(0, len(params)), ("nonce", f'"{b64url(rng.randbytes(rng.randint(0, 20)))}"'))
    return c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))


@mutation("expires on a response not a number", kinds=("response",), interop=False)
def _response_expires_odd(c: Case, rng: random.Random) -> Case:
    params = list(c.parts.params)
    value = rng.choice(['"x"', "abc", ":AAAA:", f"@{_created(c)}", '%"x"', f'"{_created(c)}"'])
    params.insert(rng.randint(0, len(params)), ("expires", value))
    changed = c.with_parts(dataclasses.replace(c.parts, params=tuple(params)))
    return dataclasses.replace(changed, deviation=True)


# Signature


@mutation("signed by another key")
def _other_key(c: Case, rng: random.Random) -> Case:
    seed = rng.randbytes(32)
    return dataclasses.replace(
        c, signer=Signer(c.signer.keyid, Ed25519PrivateKey.from_private_bytes(seed), seed.hex())
    )


@mutation("signature bit flipped")
def _bit_flipped(c: Case, rng: random.Random) -> Case:
    raw = bytearray(c.signature)
    raw[rng.randrange(64)] ^= 1 << rng.randrange(8)
    return c.set("Signature", f"yp=:{_b64(bytes(raw))}:")


@mutation("signature of another length")
def _signature_length(c: Case, rng: random.Random) -> Case:
    raw = rng.choice([c.signature[:-1], c.signature[:32], c.signature + b"\0", b"", c.signature * 2])
    return c.set("Signature", f"yp=:{_b64(raw)}:")


@mutation("signature not base64")
def _signature_not_base64(c: Case, rng: random.Random) -> Case:
    text = _b64(c.signature)
    i = rng.randrange(86)
    bad = text[:i] + rng.choice("!-_*. é") + text[i + 1 :]
    return c.set(
        "Signature", rng.choice([f"yp=:{bad}:", f"yp=:{text}=:", f"yp=:={text[1:]}:", f"yp=:{text[:-3]}:"])
    )


@mutation("signature base64 in another form", interop=False)
def _signature_b64_forms(c: Case, rng: random.Random) -> Case:
    text = _b64(c.signature)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    index = alphabet.index(text[85])
    pad_bits = alphabet[(index & 0b110000) | rng.randint(1, 15)]
    return c.set(
        "Signature", rng.choice([f"yp=:{text[:-2]}:", f"yp=:{text[:-1]}:", f"yp=:{text[:85]}{pad_bits}==:"])
    )


@mutation("signature member of another type")
def _signature_type(c: Case, rng: random.Random) -> Case:
    text = _b64(c.signature)
    return c.set("Signature", rng.choice([f'yp="{text}"', f"yp=(:{text}:)", "yp", "yp=1", f"yp=:{text}:;x"]))


@mutation("signature input member of another type")
def _input_type(c: Case, rng: random.Random) -> Case:
    params = c.parts.render().partition(")")[2]
    return c.set(
        "Signature-Input", rng.choice([f'yp="@method"{params}', f"yp{params}", "yp=()", f"yp=(){params}"])
    )


@mutation("label renamed")
def _label_renamed(c: Case, rng: random.Random) -> Case:
    label = rng.choice(["sig1", "y", "yp1", "ypp"])
    where = rng.choice(["both", "Signature", "Signature-Input"])
    if where != "Signature":
        c = c.with_parts(dataclasses.replace(c.parts, label=label))
    if where != "Signature-Input":
        c = c.set("Signature", f"{label}=:{_b64(c.signature)}:")
    return c


@mutation("another signature in both headers")
def _other_signature(c: Case, rng: random.Random) -> Case:
    member, signature = _other_member(c, rng)
    ours_input, ours = c.value("Signature-Input"), c.value("Signature")
    if rng.random() < 0.5:
        return c.set("Signature-Input", f"{member}, {ours_input}").set("Signature", f"{signature}, {ours}")
    return c.set("Signature-Input", f"{ours_input}, {member}").set("Signature", f"{ours}, {signature}")


@mutation("another signature in one header only", interop=False)
def _other_signature_once(c: Case, rng: random.Random) -> Case:
    member, signature = _other_member(c, rng)
    if rng.random() < 0.5:
        return c.set("Signature-Input", f"{c.value('Signature-Input')}, {member}")
    return c.set("Signature", f"{signature}, {c.value('Signature')}")


@mutation("another signature, malformed", interop=False)
def _other_signature_bad(c: Case, rng: random.Random) -> Case:
    member, signature = _other_member(c, rng)
    label = member.partition("=")[0]
    member, signature = rng.choice(
        [
            (member.replace(f"created={_created(c)}", 'created="1"'), signature),
            (member.replace('keyid="x/y"', "keyid=xy"), signature),
            (member + ";expires=1.5", signature),
            (f'{label}="@method"', signature),
            (member, f'{label}="abc"'),
            (member, f"{label}=(:AAAA:)"),
            (member + ';tag="yipanqi/1"', signature),
        ]
    )
    return c.set("Signature-Input", f"{c.value('Signature-Input')}, {member}").set(
        "Signature", f"{signature}, {c.value('Signature')}"
    )


@mutation("signature header lines duplicated", interop=False)
def _lines_twice(c: Case, rng: random.Random) -> Case:
    name = rng.choice(["Signature-Input", "Signature"])
    return dataclasses.replace(c, headers=(*c.headers, (name.lower(), c.value(name))))


@mutation("signature headers in several lines", interop=False)
def _split_lines(c: Case, rng: random.Random) -> Case:
    member, signature = _other_member(c, rng)
    headers = [(k, v) for k, v in c.headers if k.lower() not in ("signature", "signature-input")]
    ours = [("Signature-Input", c.value("Signature-Input")), ("Signature", c.value("Signature"))]
    others = [("Signature-Input", member), ("Signature", signature)]
    if rng.random() < 0.3:
        others += [("Signature-Input", ""), ("Signature", " ")]
    lines = ours + others
    rng.shuffle(lines)
    return dataclasses.replace(c, headers=tuple(headers + lines))


@mutation("signature headers missing or empty")
def _headers_missing(c: Case, rng: random.Random) -> Case:
    names = rng.choice([["Signature"], ["Signature-Input"], ["Signature", "Signature-Input"]])
    value = rng.choice([None, "", None])
    for name in names:
        c = c.set(name, value)
    return c


@mutation("non-ASCII in the signature headers")
def _non_ascii(c: Case, rng: random.Random) -> Case:
    if rng.random() < 0.5:
        return c.with_parts(c.parts.with_param("keyid", f'"{c.known_keyid}é"'))
    return c.set("Signature", c.value("Signature") + rng.choice(["é", ", é=1", "\u00a0"]))


# white space


@mutation("white space the syntax allows")
def _space_allowed(c: Case, rng: random.Random) -> Case:
    si, sig = c.value("Signature-Input"), c.value("Signature")
    choice = rng.randrange(6)
    if choice == 0:
        return c.set("Signature-Input", f"  {si} ").set("Signature", f" {sig}  ")
    if choice == 1:
        return c.set(
            "Signature-Input", si.replace("(", "(  ", 1).replace(")", " )", 1).replace('" "', '"   "')
        )
    if choice == 2:
        return c.set("Signature-Input", si.replace(";", "; "))
    if choice == 3:
        return c.set("Signature-Input", si + "\t").set("Signature", sig + " \t ")
    member, signature = _other_member(c, rng)
    sep = rng.choice([" ,", ",\t", " , ", ",", "\t,\t"])
    return c.set("Signature-Input", f"{member}{sep}{si}").set("Signature", f"{sig}{sep}{signature}")


@mutation("white space the syntax refuses")
def _space_refused(c: Case, rng: random.Random) -> Case:
    si = c.value("Signature-Input")
    bad = [
        si.replace(";", " ;", 1),
        si.replace("yp=", "yp =", 1),
        si.replace("yp=", "yp= ", 1),
        "\t" + si,
        si.replace('" "', '"\t"', 1),
        si.replace('" "', '""', 1),
        si.replace(";created=", ";created= ", 1),
        si.replace(";created=", ";created =", 1),
        si + "\n",
        si.replace(";", "\r\n ;", 1),
        si + ",",
        "," + si,
    ]
    return c.set("Signature-Input", rng.choice(bad))


@mutation("a string split across header lines, re-signed", interop=False, resign=True)
def _string_split(c: Case, rng: random.Random) -> Case:
    """The lines are joined with ", " as received but trimmed first for the base (RFC 9421 2.1)."""
    si = c.value("Signature-Input")
    start = si.index(';keyid="') + len(';keyid="')
    end = si.index('"', start)
    if "\\" in si[start:end]:
        return c
    at = rng.randint(start, end)
    trail, lead = rng.choice(["", " ", "\t "]), rng.choice(["", " ", " \t"])
    lines = [si[:at] + trail, lead + si[at:]]
    headers = [(k, v) for k, v in c.headers if k.lower() != "signature-input"]
    headers += [("Signature-Input", line) for line in lines]
    keyid = si[start:at] + trail + ", " + lead + si[at:end]  # as rule 3 reads it, from the joined lines
    return dataclasses.replace(c, headers=tuple(headers), known_keyid=keyid)
