"""Authority keys: the Ed25519 keys a node trusts to sign its directory (a setting, not a table).

Kept free of other ``service`` imports: ``service.config`` checks the setting with ``parse_authority_keys``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.signing.keys import public_key_from_text

# e.g. ``henan/2026``: letters, digits and ``. _ - /``, 1 to 64 characters.
AUTHORITY_KEYID_RE = re.compile(r"[A-Za-z0-9._/-]{1,64}")


def check_authority_keyid(keyid: str) -> str:
    if not AUTHORITY_KEYID_RE.fullmatch(keyid):
        raise ValueError("an authority keyid is 1-64 of A-Z a-z 0-9 . _ - /, e.g. henan/2026")
    return keyid


def parse_authority_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """``henan/2026=<base64url public key>`` → (keyid, key); ValueError naming what is wrong."""
    keyid, sep, public = text.strip().partition("=")
    if not sep:
        raise ValueError("an authority key is <keyid>=<base64url Ed25519 public key>")
    check_authority_keyid(keyid)
    try:
        return keyid, public_key_from_text(public)
    except ValueError:
        raise ValueError(f"the public key of authority key {keyid} is not 43 base64url characters") from None


def parse_authority_keys(texts: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for text in texts:
        keyid, key = parse_authority_key(text)
        if keyid in keys:
            raise ValueError(f"authority key {keyid} is given twice")
        keys[keyid] = key
    return keys
