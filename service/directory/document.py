"""The signed directory document: format, canonical form (RFC 8785), signing and verification.

A signed directory file is one JSON object::

    {"directory": {"format": "yipanqi-directory/1", "version": 7, "issuer": "河南省卫生健康委员会",
                   "issued_at": "2026-06-01T00:00:00Z", "expires_at": "2026-07-01T00:00:00Z",
                   "peers": [{"node_id": "410105", "name": "金水区", "url": "https://…",
                              "keys": [{"keyid": "410105/k1", "public_key": "<base64url>",
                                        "not_before": null, "not_after": null}]}]},
     "signatures": [{"keyid": "henan/2026", "alg": "ed25519", "signature": "<base64url>"}]}

Each signature is Ed25519 over the RFC 8785 (JCS) canonical bytes of the ``directory`` value as it
stands in the file, so any tool that implements JCS verifies it; the signatures are detached from
what they sign, and a document may carry several (an authority rotating its own key signs with
both). Everything here is CPU work with no database: verify before a transaction, sign after one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.directory.authority import check_authority_keyid
from service.errors import DomainError
from service.signing.keys import b64url, b64url_decode, is_node_id, public_key_from_text, split_keyid

FORMAT = "yipanqi-directory/1"
MAX_VERSION = 2**53 - 1  # JCS numbers are IEEE doubles: integers beyond this do not survive


class DirectoryRefused(DomainError):
    """A directory document that is not taken: bad signature, bad form, expired (422)."""

    status_code = 422
    code = "directory_refused"
    title = "Directory document refused"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Text64 = Annotated[str, Field(min_length=1, max_length=64)]


class DirectoryKey(_Strict):
    keyid: str = Field(max_length=40)
    public_key: str = Field(max_length=64)
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None

    @field_validator("keyid")
    @classmethod
    def _keyid(cls, value: str) -> str:
        split_keyid(value)
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        public_key_from_text(value)
        return value

    @model_validator(mode="after")
    def _window(self) -> DirectoryKey:
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError(f"key {self.keyid}: not_after must be later than not_before")
        return self


class DirectoryPeer(_Strict):
    node_id: str
    name: Text64
    url: str = Field(min_length=8, max_length=512)
    keys: list[DirectoryKey] = Field(min_length=1, max_length=16)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not is_node_id(value):
            raise ValueError("node_id must be a 6-digit GB/T 2260 county code")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// (or http://)")
        return value

    @model_validator(mode="after")
    def _own_keys(self) -> DirectoryPeer:
        for key in self.keys:
            if split_keyid(key.keyid)[0] != self.node_id:
                raise ValueError(f"key {key.keyid} does not belong to node {self.node_id}")
        return self


class Directory(_Strict):
    format: Literal["yipanqi-directory/1"]
    version: int = Field(ge=1, le=MAX_VERSION)
    issuer: str = Field(min_length=1, max_length=128)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    peers: list[DirectoryPeer] = Field(max_length=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> Directory:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be later than issued_at")
        nodes = [p.node_id for p in self.peers]
        if len(set(nodes)) != len(nodes):
            raise ValueError("a node_id is listed twice")
        keyids = [k.keyid for p in self.peers for k in p.keys]
        if len(set(keyids)) != len(keyids):
            raise ValueError("a keyid is listed twice")
        return self


class Signature(_Strict):
    keyid: str = Field(max_length=64)
    alg: Literal["ed25519"]
    signature: str = Field(max_length=128)


class SignedFile(_Strict):
    directory: dict[str, Any]
    signatures: list[Signature] = Field(min_length=1, max_length=8)


@dataclass(frozen=True)
class VerifiedDirectory:
    directory: Directory
    digest: str  # SHA-256 hex of the canonical directory bytes
    authority_keyid: str  # the first trusted key whose signature verified
    canonical_file: str  # the whole signed file in canonical form (what is stored)


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise DirectoryRefused(f"the directory cannot be put in canonical form: {exc}") from None


def time_text(at: datetime) -> str:
    """The document's time form: RFC 3339 UTC with ``Z``, whole seconds."""
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_directory(
    *, version: int, issuer: str, issued_at: datetime, expires_at: datetime, peers: list[dict[str, Any]]
) -> dict[str, Any]:
    """The unsigned directory as JSON (validated: a bad source fails here, on the authority's side)."""
    body = {
        "format": FORMAT,
        "version": version,
        "issuer": issuer,
        "issued_at": time_text(issued_at),
        "expires_at": time_text(expires_at),
        "peers": peers,
    }
    try:
        Directory.model_validate(body)
    except ValidationError as exc:
        raise DirectoryRefused(f"the directory does not validate: {_first_error(exc)}") from None
    return body


def sign_directory(directory: dict[str, Any], keyid: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed file for ``directory`` (a JSON object), signed by one authority key."""
    check_authority_keyid(keyid)
    signature = private_key.sign(canonical(directory))
    return {
        "directory": directory,
        "signatures": [{"keyid": keyid, "alg": "ed25519", "signature": b64url(signature)}],
    }


def dump_signed(signed: dict[str, Any]) -> bytes:
    """The signed file as written: canonical, so that one document has one byte form."""
    return canonical(signed)


def verify_document(
    raw: bytes, trusted: dict[str, Ed25519PublicKey], *, max_bytes: int | None = None
) -> VerifiedDirectory:
    """Check a signed directory file against the trusted authority keys; DirectoryRefused if not.

    Accepted only if some signature is by a trusted key and every signature by a trusted key
    verifies (signatures by keys this node does not know are ignored). The content is validated
    after the signature: nothing unsigned is looked at beyond its JSON form."""
    if not trusted:
        raise DirectoryRefused(
            "no authority key is configured (YIPANQI_DIRECTORY_AUTHORITY_KEYS): "
            "a signed directory cannot be checked"
        )
    if max_bytes is not None and len(raw) > max_bytes:
        raise DirectoryRefused(f"the document is larger than {max_bytes} bytes")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DirectoryRefused("the document is not JSON in UTF-8") from None
    try:
        signed = SignedFile.model_validate(parsed)
    except ValidationError as exc:
        raise DirectoryRefused(f"not a signed directory file: {_first_error(exc)}") from None
    message = canonical(signed.directory)
    checked: str | None = None
    for entry in signed.signatures:
        key = trusted.get(entry.keyid)
        if key is None:
            continue
        try:
            key.verify(b64url_decode(entry.signature), message)
        except (InvalidSignature, ValueError):
            raise DirectoryRefused(
                f"the signature by authority key {entry.keyid} does not verify: the document was changed "
                "after it was signed, or not signed by that key"
            ) from None
        checked = checked or entry.keyid
    if checked is None:
        names = ", ".join(sorted({s.keyid for s in signed.signatures}))
        raise DirectoryRefused(f"signed by no authority key this node trusts (signed by: {names})")
    try:
        directory = Directory.model_validate(signed.directory)
    except ValidationError as exc:
        raise DirectoryRefused(f"the signed directory does not validate: {_first_error(exc)}") from None
    return VerifiedDirectory(
        directory=directory,
        digest=hashlib.sha256(message).hexdigest(),
        authority_keyid=checked,
        canonical_file=canonical(parsed).decode("utf-8"),
    )


def check_times(directory: Directory, now: datetime, skew: timedelta) -> None:
    """A document to import now: not expired, not issued in the future (beyond the clock skew)."""
    if directory.expires_at <= now:
        raise DirectoryRefused(
            f"directory version {directory.version} expired at {time_text(directory.expires_at)}: ask the "
            "authority for a current one"
        )
    if directory.issued_at > now + skew:
        raise DirectoryRefused(
            f"directory version {directory.version} is issued at {time_text(directory.issued_at)}, in the "
            "future: check this node's clock"
        )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])
