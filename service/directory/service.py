"""The local directory: which peers and keys this node trusts (PROTOCOL.md "Nodes and keys")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import Session, select

from service.errors import NotFound, ValidationFailed
from service.models import Peer, PeerKey
from service.signing.keys import is_node_id, public_key_from_text, split_keyid


@dataclass(frozen=True)
class KeySpec:
    keyid: str
    public_key: str

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """``410105/k1=<base64url>`` as ``yipanqi peers add --key`` takes it."""
        keyid, sep, public_key = text.partition("=")
        if not sep:
            raise ValueError("key must be <node_id>/<label>=<base64url public key>")
        split_keyid(keyid)
        public_key_from_text(public_key)
        return cls(keyid, public_key)


def add_peer(session: Session, *, node_id: str, name: str, url: str, keys: list[KeySpec]) -> Peer:
    """Add a peer or update its name, URL and keys (keys not given are kept)."""
    if not is_node_id(node_id):
        raise ValidationFailed("node_id must be a 6-digit GB/T 2260 code", field="node_id")
    if not url.startswith(("http://", "https://")):
        raise ValidationFailed("url must start with http:// or https://", field="url")
    for key in keys:
        if split_keyid(key.keyid)[0] != node_id:
            raise ValidationFailed(f"key {key.keyid} does not belong to node {node_id}", field="key")
    peer = session.get(Peer, node_id) or Peer(node_id=node_id, name=name, url=url)
    peer.name, peer.url = name, url.rstrip("/")
    session.add(peer)
    session.flush()
    for key in keys:
        row = session.get(PeerKey, key.keyid) or PeerKey(keyid=key.keyid, node_id=node_id, public_key="")
        row.public_key = key.public_key
        session.add(row)
    session.flush()
    return peer


def remove_peer(session: Session, node_id: str) -> None:
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


def list_peers(session: Session) -> list[tuple[Peer, list[PeerKey]]]:
    peers = session.exec(select(Peer).order_by(Peer.node_id)).all()
    keys = session.exec(select(PeerKey).order_by(PeerKey.keyid)).all()
    return [(p, [k for k in keys if k.node_id == p.node_id]) for p in peers]


def get_peer(session: Session, node_id: str) -> Peer | None:
    return session.get(Peer, node_id)


def resolve_key(session: Session, keyid: str, now: datetime) -> Ed25519PublicKey | None:
    """The public key for ``keyid`` if it is in the directory and valid at ``now``."""
    row = session.get(PeerKey, keyid)
    if row is None:
        return None
    if (row.not_before and now < row.not_before) or (row.not_after and now >= row.not_after):
        return None
    return public_key_from_text(row.public_key)
