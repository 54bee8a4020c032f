"""Ed25519 key pairs: generation, files (private key mode 0600) and the protocol's text form."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

NODE_ID_RE = re.compile(r"^[1-9][0-9]{5}$")
KEY_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


def is_node_id(value: str) -> bool:
    return bool(NODE_ID_RE.fullmatch(value))


def split_keyid(keyid: str) -> tuple[str, str]:
    """``410105/k1`` → (``410105``, ``k1``); ValueError if it is not a protocol keyid."""
    node_id, sep, label = keyid.partition("/")
    if not sep or not is_node_id(node_id) or not KEY_LABEL_RE.fullmatch(label):
        raise ValueError(f"keyid must be <node_id>/<label>, got {keyid!r}")
    return node_id, label


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: Ed25519PublicKey) -> str:
    """The protocol's text form: base64url, no padding, of the 32 raw bytes."""
    return b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_from_text(text: str) -> Ed25519PublicKey:
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key_path(keys_dir: Path, label: str) -> Path:
    return keys_dir / f"{label}.pem"


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write PKCS#8 PEM, created with mode 0600 (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key
