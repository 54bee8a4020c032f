"""The local directory: which peers and keys this node trusts (docs/protocol.md "Nodes and keys")."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.directory.signed import DIRECTORY, in_force, refuse_local_edit
from service.errors import NotFound, ValidationFailed
from service.models import LocalNode, NodeKey, Peer, PeerKey
from service.signing.keys import is_node_id, public_key_from_text, split_keyid
from service.snapshots import Snapshot, mark_changed

__all__ = ["DIRECTORY"]  # the snapshot topic of peers and their keys (defined in signed.py)

BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
PUBLIC_KEY_CHARS = 43  # base64url of 32 bytes, unpadded
COPY_HINT = "copy the whole --key value that the peer's `yipanqi init` (or `yipanqi public-key`) printed"


@dataclass(frozen=True)
class KeySpec:
    keyid: str
    public_key: str

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """``410105/k1=<base64url>`` as ``yipanqi peers add --key`` takes it."""
        keyid, sep, public_key = text.partition("=")
        if not sep:
            raise ValueError(f"key must be <node_id>/<label>=<base64url public key>: {COPY_HINT}")
        split_keyid(keyid)
        if not BASE64URL.fullmatch(public_key):
            raise ValueError(f"the public key of {keyid} is not base64url (A-Z a-z 0-9 - _): {COPY_HINT}")
        if len(public_key) != PUBLIC_KEY_CHARS:
            cut = "cut short" if len(public_key) < PUBLIC_KEY_CHARS else "too long"
            raise ValueError(
                f"the public key of {keyid} has {len(public_key)} characters, not {PUBLIC_KEY_CHARS} "
                f"(an Ed25519 public key is 32 bytes): it looks {cut}; {COPY_HINT}"
            )
        public_key_from_text(public_key)
        return cls(keyid, public_key)


def check_node_id(node_id: str) -> None:
    if not is_node_id(node_id):
        raise ValidationFailed(
            f"node id {node_id!r} is not a 6-digit GB/T 2260 county code such as 411627", field="node_id"
        )


def add_peer(session: Session, *, node_id: str, name: str, url: str, keys: list[KeySpec]) -> Peer:
    """Add a peer or update its name, URL and keys (keys not given are kept).

    Refused (409) once a signed directory is in force: the authority's document is the one source."""
    check_node_id(node_id)
    refuse_local_edit(session)
    if not url.startswith(("http://", "https://")):
        raise ValidationFailed("url must start with http:// or https://", field="url")
    for key in keys:
        if split_keyid(key.keyid)[0] != node_id:
            raise ValidationFailed(f"key {key.keyid} does not belong to node {node_id}", field="key")
    _refuse_self(session, node_id, keys)
    peer = session.get(Peer, node_id) or Peer(node_id=node_id, name=name, url=url)
    peer.name, peer.url = name, url.rstrip("/")
    session.add(peer)
    session.flush()
    for key in keys:
        row = session.get(PeerKey, key.keyid) or PeerKey(keyid=key.keyid, node_id=node_id, public_key="")
        row.public_key = key.public_key
        session.add(row)
    session.flush()
    mark_changed(session, DIRECTORY)
    return peer


def _refuse_self(session: Session, node_id: str, keys: list[KeySpec]) -> None:
    """A node never trusts itself: its own code or key as a peer's is a copy-paste mistake."""
    local = session.exec(select(LocalNode)).first()
    if local is not None and local.node_id == node_id:
        raise ValidationFailed(
            f"{node_id} is this node itself ({local.name}): add the other county's node id", field="node_id"
        )
    own = {row.public_key for row in session.exec(select(NodeKey))}
    for key in keys:
        if key.public_key in own:
            raise ValidationFailed(f"key {key.keyid} is this node's own public key: {COPY_HINT}", field="key")


def remove_peer(session: Session, node_id: str) -> None:
    refuse_local_edit(session)
    peer = session.get(Peer, node_id)
    if peer is None:
        raise NotFound(f"no peer {node_id} in the directory")
    for key in session.exec(select(PeerKey).where(PeerKey.node_id == node_id)):
        session.delete(key)
    # Keys first: with no ORM relationship the unit of work may delete the peer first, and the
    # database's ON DELETE CASCADE then leaves the key DELETEs matching nothing (SAWarning).
    session.flush()
    session.delete(peer)
    session.flush()
    mark_changed(session, DIRECTORY)


def retire_key(session: Session, keyid: str, at: datetime) -> PeerKey:
    """Stop trusting one key of a peer from ``at`` (a rotation done, or a key revoked): its
    ``not_after`` is set, so signatures made with it are refused; the row stays as the record.
    A key already retired earlier keeps its earlier end. Refused once a signed directory is in force."""
    refuse_local_edit(session)
    row = session.get(PeerKey, keyid)
    if row is None:
        raise NotFound(f"no key {keyid} in the directory")
    if row.not_after is None or row.not_after > at:
        row.not_after = at
        session.add(row)
        session.flush()
        mark_changed(session, DIRECTORY)
    return row


def list_peers(session: Session) -> list[tuple[Peer, list[PeerKey]]]:
    peers = session.exec(select(Peer).order_by(Peer.node_id)).all()
    keys = session.exec(select(PeerKey).order_by(PeerKey.keyid)).all()
    return [(p, [k for k in keys if k.node_id == p.node_id]) for p in peers]


def peer_names(session: Session) -> dict[str, str]:
    """Each peer's name by its node id (for pages and reports)."""
    rows = session.exec(select(Peer.node_id, Peer.name)).all()
    return {str(node_id): str(name) for node_id, name in rows}


def get_peer(session: Session, node_id: str) -> Peer | None:
    return session.get(Peer, node_id)


@dataclass(frozen=True)
class TrustedKey:
    public_key: Ed25519PublicKey
    not_before: datetime | None
    not_after: datetime | None

    def valid_at(self, now: datetime) -> bool:
        return not ((self.not_before and now < self.not_before) or (self.not_after and now >= self.not_after))


def _lapsed(row: PeerKey, directory_expires_at: datetime | None) -> bool:
    """No key becomes valid on a lapsed signed directory: one whose ``not_before`` is at or after
    the expiry of the directory in force is not trusted until a newer document lists it."""
    return (
        directory_expires_at is not None
        and row.not_before is not None
        and row.not_before >= directory_expires_at
    )


def _directory_expiry(session: Session) -> datetime | None:
    doc = in_force(session)
    return doc.expires_at if doc is not None else None


def _load_keys(session: Session) -> dict[str, TrustedKey]:
    expires_at = _directory_expiry(session)
    return {
        row.keyid: TrustedKey(public_key_from_text(row.public_key), row.not_before, row.not_after)
        for row in session.exec(select(PeerKey))
        if not _lapsed(row, expires_at)
    }


class PeerKeys:
    """The directory's public keys from memory, for signature checks (no database read per request)."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        refresh_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = Snapshot(
            DIRECTORY, _load_keys, engine=engine, refresh_seconds=refresh_seconds, monotonic=monotonic
        )

    def resolve(self, keyid: str, now: datetime) -> Ed25519PublicKey | None:
        """The public key for ``keyid`` if it is in the directory and valid at ``now``."""
        key = self._keys.get().get(keyid)
        if key is None:
            key = self._keys.missed().get(keyid)
        return key.public_key if key is not None and key.valid_at(now) else None


def resolve_key(session: Session, keyid: str, now: datetime) -> Ed25519PublicKey | None:
    """The public key for ``keyid`` read from the database (the relay's check of an answer)."""
    row = session.get(PeerKey, keyid)
    if row is None or _lapsed(row, _directory_expiry(session)):
        return None
    key = TrustedKey(public_key_from_text(row.public_key), row.not_before, row.not_after)
    return key.public_key if key.valid_at(now) else None
