"""The library-based implementation of the signature profile, as it ran before the fast path.

Kept unchanged (apart from this docstring) as the reference for ``tests/signing/test_fast_path.py``
and ``bench/signing.py``; the service itself uses ``service.signing.http``. It is built on
``http-message-signatures`` and ``http_sf``.

Requests cover ``"@method" "@path" "content-type" "content-digest"`` with parameters in the
protocol's order (created, expires, nonce, keyid, alg, tag); responses cover
``"@status" "content-type" "content-digest"`` with created, keyid, alg, tag.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    PreparedSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

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
REQUEST_PARAM_ORDER = ("created", "expires", "nonce", "keyid", "alg", "tag")
MAX_NONCE_BYTES = 96  # 128 base64url characters
# The host part is not covered (docs/protocol.md); the library needs an absolute URL to read @path from.
_PLACEHOLDER_ORIGIN = "http://peer.invalid"


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` of the exact body bytes (sha-256)."""
    return str(ContentDigest.create(body))


def new_nonce() -> str:
    return b64url(secrets.token_bytes(18))


class _Headers:
    """A header list the library can read and write, keeping field lines in order."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(k, v) for k, v in items]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Any:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k, _ in self._items)

    def __setitem__(self, name: str, value: str) -> None:
        del self[name]
        self._items.append((name, value))

    def __delitem__(self, name: str) -> None:
        self._items = [(k, v) for k, v in self._items if k.lower() != name.lower()]

    def get(self, name: str) -> str | None:
        values = [v for k, v in self._items if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class _Request:
    method: str
    url: str
    headers: _Headers


@dataclass
class _Response:
    status_code: int
    headers: _Headers
    request: None = field(default=None)


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey | None = None, public: Ed25519PublicKey | None = None):
        self.private, self.public = private, public

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey | None:  # noqa: ARG002
        return self.private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:  # noqa: ARG002
        return self.public


class _ClockedVerifier(HTTPMessageVerifier):
    """Time windows are checked by ``verify_request`` against the node's clock, not the library's."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:  # noqa: ARG002
        return None


def _reorder(prepared: PreparedSignature, order: tuple[str, ...]) -> PreparedSignature:
    """The library writes parameters in its own order; docs/protocol.md fixes another one."""
    parsed: Any = http_sf.parse(f"{LABEL}={prepared.signature_params}".encode(), tltype="dictionary")
    components, params = parsed[LABEL]
    ordered = {name: params[name] for name in order if name in params}
    params_text = str(http_sf.ser({LABEL: (components, ordered)}))[len(LABEL) + 1 :]
    lines = prepared.signature_base.decode("ascii").split("\n")
    lines[-1] = f'"@signature-params": {params_text}'
    return PreparedSignature("\n".join(lines).encode("ascii"), params_text, LABEL, prepared.algorithm_id)


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
    """The headers of a signed peer request: Content-Type, Content-Digest, Signature-Input, Signature."""
    message = _Request(method, _PLACEHOLDER_ORIGIN + path, _Headers([("Content-Type", "application/json")]))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(private=key))
    prepared = signer.prepare(
        message,
        key_id=keyid,
        created=created,
        expires=created + lifetime,
        nonce=nonce or new_nonce(),
        label=LABEL,
        tag=TAG,
        covered_component_ids=REQUEST_COMPONENTS,
        body=body,
    )
    prepared = _reorder(prepared, REQUEST_PARAM_ORDER)
    signer.apply(message, prepared, key.sign(prepared.signature_base))
    return dict(message.headers.items())


def sign_response(
    *, status: int, body: bytes, key: Ed25519PrivateKey, keyid: str, created: datetime, content_type: str
) -> dict[str, str]:
    message = _Response(status, _Headers([("Content-Type", content_type)]))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(private=key))
    signer.sign(
        message,
        key_id=keyid,
        created=created,
        label=LABEL,
        tag=TAG,
        covered_component_ids=RESPONSE_COMPONENTS,
        body=body,
    )
    return dict(message.headers.items())


@dataclass(frozen=True)
class VerifiedSignature:
    keyid: str
    nonce: str | None
    created: datetime
    expires: datetime | None
    signature_input: str
    signature: str


def _parse_signature(headers: _Headers) -> tuple[list[str], dict[str, Any], str, str]:
    sig_input, sig = headers.get("Signature-Input"), headers.get("Signature")
    if not sig_input or not sig:
        raise SignatureMissing("Signature-Input and Signature headers are required")
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
    components = [m[0] for m in members]
    return components, dict(params), sig_input, sig


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
    if expires is not None and (expires <= ts or expires > created + lifetime):
        raise SignatureExpired(f"expires must be in the future and at most created + {lifetime}")


def _verify_crypto(message: _Request | _Response, key: Ed25519PublicKey, components: tuple[str, ...]) -> None:
    verifier = _ClockedVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(public=key))
    try:
        verifier.verify(
            message, max_age=None, expect_tag=TAG, expect_label=LABEL, require_components=components
        )
    except (InvalidSignature, HTTPMessageSignaturesException) as exc:
        raise SignatureInvalid("the signature does not verify") from exc


def _check_digest(headers: _Headers, body: bytes) -> None:
    digest = headers.get("Content-Digest")
    try:
        parsed: Any = http_sf.parse(digest.encode("ascii"), tltype="dictionary") if digest else {}
    except (ValueError, UnicodeEncodeError) as exc:
        raise DigestMismatch("Content-Digest is malformed") from exc
    member = parsed.get("sha-256")
    if member is None or member[0] != hashlib.sha256(body).digest():
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
    message = _Request(method, _PLACEHOLDER_ORIGIN + path, _Headers(headers))
    components, params, sig_input, sig = _parse_signature(message.headers)
    _check_params(params, expect_expires=True)
    if tuple(components) != REQUEST_COMPONENTS:
        raise SignatureInvalid("covered components must be " + " ".join(f'"{c}"' for c in REQUEST_COMPONENTS))
    key = resolve_key(params["keyid"])
    if key is None:
        raise UnknownKey("keyid is not in the directory or not valid now")
    _check_time(params, now, skew_seconds, lifetime_seconds)
    _verify_crypto(message, key, REQUEST_COMPONENTS)
    _check_digest(message.headers, body)
    return VerifiedSignature(
        keyid=params["keyid"],
        nonce=params["nonce"],
        created=datetime.fromtimestamp(params["created"], now.tzinfo),
        expires=datetime.fromtimestamp(params["expires"], now.tzinfo),
        signature_input=sig_input,
        signature=sig,
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
) -> VerifiedSignature:
    """Check a peer's signed response (a receipt is evidence only if this passes)."""
    message = _Response(status, _Headers(headers))
    components, params, sig_input, sig = _parse_signature(message.headers)
    _check_params(params, expect_expires=False)
    if tuple(components) != RESPONSE_COMPONENTS:
        raise SignatureInvalid("response must cover " + " ".join(RESPONSE_COMPONENTS))
    if not params["keyid"].startswith(expected_node + "/"):
        raise UnknownKey("the response is signed by another node")
    key = resolve_key(params["keyid"])
    if key is None:
        raise UnknownKey("keyid is not in the directory or not valid now")
    _check_time(params, now, skew_seconds, skew_seconds)
    _verify_crypto(message, key, RESPONSE_COMPONENTS)
    _check_digest(message.headers, body)
    return VerifiedSignature(
        keyid=params["keyid"],
        nonce=None,
        created=datetime.fromtimestamp(params["created"], now.tzinfo),
        expires=None,
        signature_input=sig_input,
        signature=sig,
    )
