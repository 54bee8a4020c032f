"""RFC 9421 signatures and RFC 9530 digests exactly as docs/protocol.md says (sections 4–6).

Requests cover ``"@method" "@path" "content-type" "content-digest"`` with parameters in the
protocol's order (created, expires, nonce, keyid, alg, tag); responses cover
``"@status" "content-type" "content-digest"`` with created, keyid, alg, tag, and, when they answer
a signed request (every answer a node verifies does), are bound to it with RFC 9421's ``req``
parameter (section 2.4): ``"@path";req "content-digest";req "signature";req;key="yp"`` follow,
the request's path, body digest and signature (docs/protocol.md section 6.1, :class:`RequestBinding`).

The protocol has one signature profile, so this module builds it directly (the signature base and
the two headers as strings, SHA-256 from hashlib, Ed25519 from ``cryptography``) instead of going
through a general RFC 9421 library, which cost more than the Ed25519 operations themselves.

What it accepts and refuses, and with which error and detail, is what the library-based
implementation it replaced did (``service.signing.reference``, on ``http-message-signatures``),
unusual input included: the rules that library applied are restated here (not called), and
``tests/signing/test_fast_path.py`` compares the two, and both with an independent implementation
(``tests/interop``), on thousands of generated, tampered and odd messages. The one deliberate
difference: a *response* whose ``expires`` parameter is not a number (a string, a token, a byte
sequence, a date) made the library path raise ``TypeError``; here it is ``SignatureInvalid``.

Received ``Signature-Input`` / ``Signature`` headers are read in one of two ways, which give the
same answer:

- the form that yipanqi (and the independent implementation) writes — one field line each, the
  profile's components, each of its parameters exactly once in any order, integers and plain
  strings, one 64-byte signature — by regular expressions (:func:`_read_canonical`);
- anything else with ``http_sf`` (RFC 8941) and the rules the library applied (:func:`_read_general`):
  several labels, duplicate labels or parameters, white space, escapes, tokens, parameters on
  components, other types. Only unusual input takes this slower way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from ipaddress import IPv6Address
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.errors import (
    DigestMismatch,
    SignatureExpired,
    SignatureInvalid,
    SignatureMissing,
    UnknownKey,
)
from service.signing.keys import b64url, b64url_decode

LABEL = "yp"
TAG = "yipanqi/1"
ALG = "ed25519"
REQUEST_COMPONENTS = ("@method", "@path", "content-type", "content-digest")
RESPONSE_COMPONENTS = ("@status", "content-type", "content-digest")
# An answer to a signed request also covers the request's path, body digest and signature (RFC 9421
# section 2.4, the ``req`` parameter; section 2.1.2, ``key`` picks the ``yp`` member).
REQUEST_BOUND = ('"@path";req', '"content-digest";req', f'"signature";req;key="{LABEL}"')
BOUND_RESPONSE_COMPONENTS = RESPONSE_COMPONENTS + REQUEST_BOUND
REQUEST_PARAM_ORDER = ("created", "expires", "nonce", "keyid", "alg", "tag")
RESPONSE_PARAM_ORDER = ("created", "keyid", "alg", "tag")
MAX_NONCE_BYTES = 96  # 128 base64url characters
JSON = "application/json"
# The host part is not covered (docs/protocol.md); @path is read as if from this origin + the path.
_PLACEHOLDER_ORIGIN = "http://peer.invalid"
# The parameters RFC 9421 defines (section 2.3); any other one on the signature is refused.
_METADATA_PARAMS = frozenset(("alg", "created", "expires", "keyid", "nonce", "tag"))
_MAX_SF_INTEGER = 999_999_999_999_999  # RFC 8941: at most 15 digits


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` of the exact body bytes (sha-256)."""
    return _digest_field(hashlib.sha256(body).digest())


def _digest_field(sha256: bytes) -> str:
    return "sha-256=:" + binascii.b2a_base64(sha256, newline=False).decode("ascii") + ":"


def new_nonce() -> str:
    return b64url(secrets.token_bytes(18))


# --- structured-field output (RFC 8941 section 4.1) --------------------------------------------------


def _sf_string(value: str) -> str:
    if not (value.isascii() and value.isprintable()):  # %x20-7E
        raise ValueError(f"{value!r} cannot be a structured-field string (printable ASCII only)")
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _sf_integer(value: int) -> str:
    if not -_MAX_SF_INTEGER <= value <= _MAX_SF_INTEGER:
        raise ValueError(f"{value} is out of the structured-field integer range")
    return str(value)


def _inner_list(components: tuple[str, ...]) -> str:
    return "(" + " ".join(c if c.startswith('"') else f'"{c}"' for c in components) + ")"


_REQUEST_INNER = _inner_list(REQUEST_COMPONENTS)
_RESPONSE_INNER = _inner_list(RESPONSE_COMPONENTS)
_BOUND_INNER = _inner_list(BOUND_RESPONSE_COMPONENTS)
_TRAILER = f';alg="{ALG}";tag="{TAG}"'


# --- component values (RFC 9421 section 2) -----------------------------------------------------------

_OBS_FOLD = re.compile(r"(?:(?<![ \t])[ \t]+)?\r\n[ \t]+")


def _normalize(value: str) -> str:
    """One field line's value as RFC 9421 section 2.1 covers it: obs-fold unfolded, OWS trimmed."""
    if "\r\n" not in value:
        return value.strip(" \t")
    return _OBS_FOLD.sub(" ", value).strip(" \t")


def _field_value(lines: list[str]) -> str | None:
    """A covered field's value (its lines trimmed, joined by ", "), or None if it cannot be signed."""
    if not lines:
        return None
    value = _normalize(lines[0]) if len(lines) == 1 else ", ".join([_normalize(v) for v in lines])
    if "\r" in value or "\n" in value:
        return None
    if value and not value.replace("\t", " ").isprintable():
        return None
    return value


def _derived_ok(value: str) -> bool:
    """A derived component's value: printable, no surrounding space (may be empty)."""
    return not value or (value.isprintable() and value[0] != " " and value[-1] != " ")


# The path of an absolute URL (RFC 3986 section 3), as http-message-signatures reads "@path" from the
# URL it is given; a request path in the usual form is taken as it is.
_CHARS = r"A-Za-z0-9._~\-!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_SIMPLE_PATH = re.compile(rf"/(?:[{_CHARS}:@/]|{_PCT})*")
_UNRESERVED = r"A-Za-z0-9._~\-"
_ZONE_ID = rf"(?:[{_UNRESERVED}]|{_PCT})+"
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    rf"(?:(?:[{_CHARS}:]|{_PCT})*@)?"
    rf"(?P<host>\[(?:[0-9A-Fa-f:.]+(?:%25{_ZONE_ID})?|[vV][0-9A-Fa-f]+\.[{_CHARS}:]+)\]|(?:[{_CHARS}]|{_PCT})+)"
    r"(?::(?P<port>[0-9]*))?"
    rf"(?P<path>/(?:[{_CHARS}:@/]|{_PCT})*)?"
    rf"(?:\?(?P<query>(?:[{_CHARS}:@/?]|{_PCT})*))?"
    rf"(?:\#(?:[{_CHARS}:@/?]|{_PCT})*)?"
)


def _at_path(path: str) -> str | None:
    """``@path`` of a request sent to ``path``, or None if that is not a valid request path."""
    if _SIMPLE_PATH.fullmatch(path):
        return path
    match = _URL.fullmatch(_PLACEHOLDER_ORIGIN + path)
    if match is None:
        return None
    host = match["host"]
    if host.startswith("[") and host[1] not in "vV":
        try:
            IPv6Address(host[1:-1].partition("%25")[0])
        except ValueError:
            return None
    return match["path"] or "/"


def _request_base(
    method: str, path: str, content_type: list[str], digest: list[str], params: str
) -> bytes | None:
    """The signature base of a request (RFC 9421 section 2.5), or None if it has none."""
    if method != method.upper() or not _derived_ok(method):
        return None
    at_path = _at_path(path)
    type_value, digest_value = _field_value(content_type), _field_value(digest)
    if at_path is None or type_value is None or digest_value is None:
        return None
    base = (
        f'"@method": {method}\n"@path": {at_path}\n"content-type": {type_value}\n'
        f'"content-digest": {digest_value}\n"@signature-params": {params}'
    )
    return base.encode("ascii") if base.isascii() else None


def _response_base(
    status: int,
    content_type: list[str],
    digest: list[str],
    params: str,
    request: RequestBinding | None = None,
) -> bytes | None:
    """The signature base of a response (bound to ``request`` if given), or None if it has none."""
    status_text = str(status)
    type_value, digest_value = _field_value(content_type), _field_value(digest)
    if not _derived_ok(status_text) or type_value is None or digest_value is None:
        return None
    bound = ""
    if request is not None:
        bound = (
            f'"@path";req: {request.path}\n"content-digest";req: {request.content_digest}\n'
            f'"signature";req;key="{LABEL}": {request.signature}\n'
        )
    base = (
        f'"@status": {status_text}\n"content-type": {type_value}\n'
        f'"content-digest": {digest_value}\n{bound}"@signature-params": {params}'
    )
    return base.encode("ascii") if base.isascii() else None


# --- binding an answer to its request (RFC 9421 section 2.4) -----------------------------------------


@dataclass(frozen=True)
class RequestBinding:
    """The request an answer is bound to: the values of its ``"@path"``, ``"content-digest"`` and
    ``"signature";key="yp"`` components, which the answer's signature covers with ``;req``.

    The receiver takes them from the request it received (:meth:`of_request`), the sender from the
    request it sent (the same method on its own headers): an answer verifies only against the
    request it was made for, so a signed answer to one request cannot be replayed for another
    (every request has its own nonce, so its own signature, and its own body)."""

    path: str  # "@path": the path, without the query
    content_digest: str  # the request's Content-Digest field value, as covered
    signature: str  # the yp member of its Signature field, serialised (":<base64>:")

    @classmethod
    def of_request(cls, path: str, headers: Iterable[tuple[str, str]]) -> RequestBinding | None:
        """The binding of a request sent to ``path`` with ``headers``; None if it cannot be bound
        (no Content-Digest, no ``yp`` signature, a path that is not a request path): such a request
        is answered with a signature that covers the response alone, which no sender accepts."""
        digest: list[str] = []
        signatures: list[str] = []
        for name, value in headers:
            lower = name.lower()
            if lower == "content-digest":
                digest.append(value)
            elif lower == "signature":
                signatures.append(value)
        at_path, digest_value = _at_path(path), _field_value(digest)
        member = _yp_member(signatures)
        if at_path is None or not digest_value or member is None:
            return None
        binding = cls(at_path, digest_value, member)
        if not all(v.isascii() and v.isprintable() for v in (at_path, digest_value, member)):
            return None
        return binding


def _yp_member(lines: list[str]) -> str | None:
    """The ``yp`` member of a Signature field, serialised (RFC 9421 section 2.1.2), or None."""
    if len(lines) == 1:
        value = lines[0].strip(" \t")
        if _SIGNATURE.fullmatch(value):
            return value[len(LABEL) + 1 :]
    if not lines:
        return None
    try:
        text = ", ".join(_normalize(v) for v in lines).encode("ascii")
        parsed: Any = http_sf.parse(text, tltype="dictionary")
        member = parsed.get(LABEL)
        return None if member is None else str(http_sf.ser(member))
    except (ValueError, TypeError, UnicodeEncodeError):
        return None


def _signature_field(signature: bytes) -> str:
    return f"{LABEL}=:" + binascii.b2a_base64(signature, newline=False).decode("ascii") + ":"


# --- signing -----------------------------------------------------------------------------------------


def sign_request(
    *,
    method: str,
    path: str,
    body: bytes,
    key: Ed25519PrivateKey,
    keyid: str,
    created: datetime,
    lifetime: timedelta = timedelta(seconds=300),
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers of a signed peer request: Content-Type, Content-Digest, Signature-Input, Signature.

    ValueError if the request cannot be signed (a method that is not upper case, a path that is
    not a request path, a keyid or nonce that is not printable ASCII)."""
    params = (
        f"{_REQUEST_INNER};created={_sf_integer(int(created.timestamp()))}"
        f";expires={_sf_integer(int((created + lifetime).timestamp()))}"
        f";nonce={_sf_string(nonce or new_nonce())};keyid={_sf_string(keyid)}{_TRAILER}"
    )
    digest = content_digest(body)
    base = _request_base(method, path, [JSON], [digest], params)
    if base is None:
        raise ValueError(f"cannot sign {method!r} {path!r}: not an upper-case method and a request path")
    return {
        "Content-Type": JSON,
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": _signature_field(key.sign(base)),
    }


def sign_response(
    *,
    status: int,
    body: bytes,
    key: Ed25519PrivateKey,
    keyid: str,
    created: datetime,
    content_type: str,
    request: RequestBinding | None = None,
) -> dict[str, str]:
    """The headers of a signed response; bound to ``request`` (RFC 9421 ``req``) when given."""
    params = (
        f"{_RESPONSE_INNER if request is None else _BOUND_INNER}"
        f";created={_sf_integer(int(created.timestamp()))}"
        f";keyid={_sf_string(keyid)}{_TRAILER}"
    )
    digest = content_digest(body)
    base = _response_base(status, [content_type], [digest], params, request)
    if base is None:
        raise ValueError(f"cannot sign a response with status {status!r} and Content-Type {content_type!r}")
    return {
        "Content-Type": content_type,
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": _signature_field(key.sign(base)),
    }


# --- reading the signature headers -------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSignature:
    keyid: str
    nonce: str | None
    created: datetime
    expires: datetime | None
    signature_input: str
    signature: str
    # A response: the request it is bound to (what its signature covers with ``req``), for evidence.
    bound_to: RequestBinding | None = None


@dataclass(frozen=True)
class _Signature:
    """The ``yp`` signature as the acceptance rules read it."""

    signature_input: str  # the header as received (its field lines joined by ", ")
    signature: str
    components: tuple[Any, ...]  # the covered components' values
    params: dict[str, Any]
    # For rule 5: "@signature-params" as the base shows it, and the signature's bytes; None when the
    # headers cannot carry a valid signature (duplicate labels, extra parameters, …).
    signature_params: str | None
    value: bytes


_INTEGER_PARAMS = frozenset(("created", "expires"))
_SF_PLAIN_STRING = r'"([\x20\x21\x23-\x5b\x5d-\x7e]*)"'  # a string that needs no escapes
# One parameter of the profile with an integer or a plain string as its value.
_PARAM = re.compile(rf";(created|expires|nonce|keyid|alg|tag)=(?:([0-9]{{1,15}})|{_SF_PLAIN_STRING})")
_SIGNATURE = re.compile(rf"{LABEL}=:([A-Za-z0-9+/]{{86}}==):")  # 64 bytes


class _Profile:
    """A message kind's covered components and the parameters its written form has, in order."""

    __slots__ = ("bound", "components", "members", "order", "prefix", "written")

    def __init__(self, components: tuple[str, ...], order: tuple[str, ...]) -> None:
        self.components = components
        self.order = order
        self.prefix = f"{LABEL}={_inner_list(components)}"  # the yp member up to its parameters
        # Components with parameters (``"@path";req``) as http_sf reads them: (name, parameters).
        self.members = tuple(_member_of(c) for c in components)
        self.bound = any(params for _, params in self.members)
        # Exactly what sign_request / sign_response write (integers without leading zeros).
        values = "".join(
            f";{name}=(0|[1-9][0-9]{{0,14}})" if name in _INTEGER_PARAMS else f";{name}={_SF_PLAIN_STRING}"
            for name in order
        )
        self.written = re.compile(re.escape(self.prefix) + values)


def _member_of(component: str) -> tuple[str, dict[str, Any]]:
    if not component.startswith('"'):
        return component, {}
    parsed: Any = http_sf.parse(component.encode("ascii"), tltype="item")
    value, params = parsed
    return str(value), dict(params)


_REQUEST = _Profile(REQUEST_COMPONENTS, REQUEST_PARAM_ORDER)
_RESPONSE = _Profile(RESPONSE_COMPONENTS, RESPONSE_PARAM_ORDER)
_BOUND_RESPONSE = _Profile(BOUND_RESPONSE_COMPONENTS, RESPONSE_PARAM_ORDER)


def _read_canonical(sig_input: str, sig: str, profile: _Profile) -> _Signature | None:
    """The headers in the written form, or None if they are in any other (then read generally)."""
    signature = _SIGNATURE.fullmatch(sig)
    if signature is None:
        return None
    written = profile.written.fullmatch(sig_input)
    if written is not None:  # the usual case: the parameters in the protocol's order
        params: dict[str, Any] = {
            name: int(value) if name in _INTEGER_PARAMS else value
            for name, value in zip(profile.order, written.groups(), strict=True)
        }
        signature_params = sig_input[len(LABEL) + 1 :]
    else:  # in another order, or with leading zeros
        prefix = profile.prefix
        if not sig_input.startswith(prefix):
            return None
        params = {}
        pos, end = len(prefix), len(sig_input)
        while pos < end:
            match = _PARAM.match(sig_input, pos)
            if match is None:
                return None
            name, integer, string = match.groups()
            if name in params or (integer is None) == (name in _INTEGER_PARAMS):
                return None
            params[name] = int(integer) if integer is not None else string
            pos = match.end()
        if len(params) != len(profile.order) or not params.keys() >= set(profile.order):
            return None
        text = "".join(f";{k}={v}" if type(v) is int else f';{k}="{v}"' for k, v in params.items())
        signature_params = prefix[len(LABEL) + 1 :] + text
    return _Signature(
        signature_input=sig_input,
        signature=sig,
        components=profile.components,
        params=params,
        signature_params=signature_params,
        value=base64.b64decode(signature[1]),
    )


def _reject_duplicate_label(key: str, context: str) -> None:
    if context == "dictionary":
        raise ValueError(f"duplicate signature label {key!r}")


def _param_types_ok(params: Mapping[str, Any]) -> bool:
    for name, value in params.items():
        if name in _INTEGER_PARAMS and type(value) is not int:
            return False
        if name in ("alg", "keyid", "nonce", "tag") and not isinstance(value, str):
            return False
    return True


def _signature_params(
    sig_input_lines: list[str], sig_lines: list[str], profile: _Profile
) -> tuple[str, bytes] | None:
    """Rule 5's reading of the headers: their lines trimmed and joined, every label well formed and
    in both, no label twice, the ``yp`` signature with only RFC 9421's parameters and exactly the
    profile's components (strings without parameters); "@signature-params" re-serialised from it."""
    try:
        inputs: Any = http_sf.parse(
            ", ".join(_normalize(v) for v in sig_input_lines).encode(),
            tltype="dictionary",
            on_duplicate_key=_reject_duplicate_label,
        )
        signatures: Any = http_sf.parse(
            ", ".join(_normalize(v) for v in sig_lines).encode(),
            tltype="dictionary",
            on_duplicate_key=_reject_duplicate_label,
        )
    except Exception:
        return None
    if not inputs or inputs.keys() != signatures.keys():
        return None
    for label, (members, params) in inputs.items():
        if not isinstance(members, list) or not isinstance(signatures[label][0], bytes):
            return None
        if not _param_types_ok(params):
            return None
    if LABEL not in inputs:
        return None
    members, params = inputs[LABEL]
    if params.get("tag") != TAG or params.get("alg", ALG) != ALG or "keyid" not in params:
        return None
    if not params.keys() <= _METADATA_PARAMS:
        return None
    if profile.bound:  # exactly the profile's identifiers, their parameters in its order
        expected = [(value, list(p.items())) for value, p in profile.members]
        if [(value, list(p.items())) for value, p in members] != expected:
            return None
        member: Any = (list(profile.members), params)
    else:
        components = profile.components
        if tuple(value for value, _ in members) != components:
            return None
        if any(not isinstance(value, str) or item_params for value, item_params in members):
            return None
        member = ([(c, {}) for c in components], params)
    try:
        text = str(http_sf.ser({LABEL: member}))
    except (ValueError, TypeError):
        return None
    return text[len(LABEL) + 1 :], signatures[LABEL][0]


def _identifier(member: Any) -> str:
    """A covered component as the bound profile names it: ``@status``, or ``"@path";req``."""
    value, params = member
    if not params:
        return str(value)
    try:
        return str(http_sf.ser((value, params)))
    except (ValueError, TypeError):
        return repr(value)


def _read_general(
    sig_input: str, sig: str, sig_input_lines: list[str], sig_lines: list[str], profile: _Profile
) -> _Signature:
    try:
        inputs: Any = http_sf.parse(sig_input.encode("ascii"), tltype="dictionary")
        signatures: Any = http_sf.parse(sig.encode("ascii"), tltype="dictionary")
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureMissing("Signature-Input or Signature is not a structured-field dictionary") from exc
    if LABEL not in inputs or LABEL not in signatures:
        raise SignatureMissing(f"no signature labelled {LABEL!r}")
    members, params = inputs[LABEL]
    if not isinstance(members, list) or not isinstance(signatures[LABEL][0], bytes):
        raise SignatureMissing("malformed signature member")
    checked = _signature_params(sig_input_lines, sig_lines, profile)
    return _Signature(
        signature_input=sig_input,
        signature=sig,
        components=tuple(_identifier(m) for m in members) if profile.bound else tuple(m[0] for m in members),
        params=dict(params),
        signature_params=None if checked is None else checked[0],
        value=b"" if checked is None else checked[1],
    )


def _read(headers: Iterable[tuple[str, str]], profile: _Profile) -> tuple[_Signature, list[str], list[str]]:
    """Rule 1: the ``yp`` signature, and the Content-Type and Content-Digest field lines."""
    sig_input_lines: list[str] = []
    sig_lines: list[str] = []
    content_type: list[str] = []
    digest: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "signature-input":
            sig_input_lines.append(value)
        elif lower == "signature":
            sig_lines.append(value)
        elif lower == "content-type":
            content_type.append(value)
        elif lower == "content-digest":
            digest.append(value)
    sig_input, sig = ", ".join(sig_input_lines), ", ".join(sig_lines)
    if not sig_input or not sig:
        raise SignatureMissing("Signature-Input and Signature headers are required")
    read = None
    if len(sig_input_lines) == 1 and len(sig_lines) == 1:
        read = _read_canonical(sig_input, sig, profile)
    if read is None:
        read = _read_general(sig_input, sig, sig_input_lines, sig_lines, profile)
    return read, content_type, digest


# --- the acceptance rules ----------------------------------------------------------------------------


def _check_params(params: Mapping[str, Any], expect_expires: bool) -> None:
    if params.get("tag") != TAG or params.get("alg") != ALG:
        raise SignatureInvalid(f'tag must be "{TAG}" and alg "{ALG}"')
    if not isinstance(params.get("keyid"), str) or type(params.get("created")) is not int:
        raise SignatureInvalid("keyid and created are required")
    if expect_expires:
        if type(params.get("expires")) is not int:
            raise SignatureInvalid("expires is required")
        nonce = params.get("nonce")
        try:
            nonce_bytes = b64url_decode(nonce) if isinstance(nonce, str) else b""
        except ValueError:
            nonce_bytes = b""
        # The upper bound is what seen_nonce.nonce holds (128 characters); docs/protocol.md sets none.
        if not 16 <= len(nonce_bytes) <= MAX_NONCE_BYTES:
            raise SignatureInvalid(f"nonce must be 16 to {MAX_NONCE_BYTES} random bytes, base64url")


def _check_time(params: Mapping[str, Any], now: datetime, skew: int, lifetime: int) -> None:
    created, expires, ts = params["created"], params.get("expires"), now.timestamp()
    if abs(ts - created) > skew:
        raise SignatureExpired("created is outside the accepted clock window")
    if expires is not None:
        # Only a response can get here with an expires that is not an integer (rule 2 checks a
        # request's); a number is judged by the clock first, anything else cannot be (rule 5).
        if not isinstance(expires, int | Decimal):
            raise SignatureInvalid("expires must be an integer")
        if expires <= ts or expires > created + lifetime:
            raise SignatureExpired(f"expires must be in the future and at most created + {lifetime}")


def _check_signature(key: Ed25519PublicKey, read: _Signature, base: bytes | None) -> None:
    try:
        if base is None:
            raise InvalidSignature
        key.verify(read.value, base)
    except InvalidSignature as exc:
        raise SignatureInvalid("the signature does not verify") from exc


def _check_digest(lines: list[str], body: bytes) -> None:
    sha256 = hashlib.sha256(body).digest()
    digest = ", ".join(lines) if lines else None
    if digest == _digest_field(sha256):
        return
    try:
        parsed: Any = http_sf.parse(digest.encode("ascii"), tltype="dictionary") if digest else {}
    except (ValueError, UnicodeEncodeError) as exc:
        raise DigestMismatch("Content-Digest is malformed") from exc
    member = parsed.get("sha-256")
    if member is None or member[0] != sha256:
        raise DigestMismatch("Content-Digest sha-256 does not match the body")


def verify_request(
    *,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    resolve_key: Callable[[str], Ed25519PublicKey | None],
    now: datetime,
    skew_seconds: int = 300,
    lifetime_seconds: int = 300,
) -> VerifiedSignature:
    """Apply acceptance rules 1–6 of docs/protocol.md in order; raise the rule's error on the first failure.

    ``resolve_key`` returns the public key if the keyid is in the directory and valid now.
    Replay (rule 7) and the body (rule 8) are the caller's, since they need the database.
    """
    read, content_type, digest = _read(headers, _REQUEST)
    params = read.params
    _check_params(params, expect_expires=True)
    if read.components != REQUEST_COMPONENTS:
        raise SignatureInvalid("covered components must be " + " ".join(f'"{c}"' for c in REQUEST_COMPONENTS))
    key = resolve_key(params["keyid"])
    if key is None:
        raise UnknownKey("keyid is not in the directory or not valid now")
    _check_time(params, now, skew_seconds, lifetime_seconds)
    base = None
    if read.signature_params is not None:
        base = _request_base(method, path, content_type, digest, read.signature_params)
    _check_signature(key, read, base)
    _check_digest(digest, body)
    return VerifiedSignature(
        keyid=params["keyid"],
        nonce=params["nonce"],
        created=datetime.fromtimestamp(params["created"], now.tzinfo),
        expires=datetime.fromtimestamp(params["expires"], now.tzinfo),
        signature_input=read.signature_input,
        signature=read.signature,
    )


def verify_response(
    *,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    resolve_key: Callable[[str], Ed25519PublicKey | None],
    expected_node: str,
    now: datetime,
    skew_seconds: int = 300,
    request: RequestBinding | None = None,
) -> VerifiedSignature:
    """Check a peer's signed response (a receipt is evidence only if this passes).

    ``request``: the request it answers. Then the response must be bound to it (cover
    ``REQUEST_BOUND`` with its values): an answer to another request, or one that covers the
    response alone, is refused with SignatureInvalid. A sender always passes it; without it only
    a response that covers itself alone verifies (an answer to an unsigned request)."""
    profile = _RESPONSE if request is None else _BOUND_RESPONSE
    read, content_type, digest = _read(headers, profile)
    params = read.params
    _check_params(params, expect_expires=False)
    if read.components != profile.components:
        if request is not None and read.components == RESPONSE_COMPONENTS:
            raise SignatureInvalid("the response is not bound to its request (RFC 9421 req)")
        raise SignatureInvalid("response must cover " + " ".join(profile.components))
    if not params["keyid"].startswith(expected_node + "/"):
        raise UnknownKey("the response is signed by another node")
    key = resolve_key(params["keyid"])
    if key is None:
        raise UnknownKey("keyid is not in the directory or not valid now")
    _check_time(params, now, skew_seconds, skew_seconds)
    base = None
    if read.signature_params is not None:
        base = _response_base(status, content_type, digest, read.signature_params, request)
    if request is None:
        _check_signature(key, read, base)
    else:
        try:
            _check_signature(key, read, base)
        except SignatureInvalid:
            raise SignatureInvalid(
                "the signature does not verify for this request (altered, or an answer to another request)"
            ) from None
    _check_digest(digest, body)
    return VerifiedSignature(
        keyid=params["keyid"],
        nonce=None,
        created=datetime.fromtimestamp(params["created"], now.tzinfo),
        expires=None,
        signature_input=read.signature_input,
        signature=read.signature,
        bound_to=request,
    )
