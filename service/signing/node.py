"""This node's identity: its code, name and the key it signs with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from service.clock import utcnow
from service.models import LocalNode, NodeKey
from service.signing.keys import (
    KEY_LABEL_RE,
    is_node_id,
    private_key_path,
    public_key_text,
    read_private_key,
    write_private_key,
)


class NodeNotInitialised(RuntimeError):
    """The data folder has no node yet: run ``yipanqi init``."""


@dataclass(frozen=True)
class NodeSigner:
    node_id: str
    name: str
    keyid: str
    private_key: Ed25519PrivateKey


def init_node(session: Session, keys_dir: Path, *, node_id: str, name: str, label: str = "k1") -> NodeKey:
    """Create this node's identity and first key pair; refuses if one exists."""
    if not is_node_id(node_id):
        raise ValueError("node id must be a 6-digit GB/T 2260 code such as 410105")
    if not KEY_LABEL_RE.fullmatch(label):
        raise ValueError("key label must match [A-Za-z0-9._-]{1,32}")
    if session.exec(select(LocalNode)).first() is not None:
        raise ValueError("this data folder already holds a node")
    key = Ed25519PrivateKey.generate()
    write_private_key(private_key_path(keys_dir, label), key)
    keyid = f"{node_id}/{label}"
    session.add(LocalNode(node_id=node_id, name=name, active_keyid=keyid))
    row = NodeKey(keyid=keyid, public_key=public_key_text(key.public_key()), not_before=utcnow())
    session.add(row)
    session.flush()
    return row


def load_signer(session: Session, keys_dir: Path) -> NodeSigner:
    node = session.exec(select(LocalNode)).first()
    if node is None:
        raise NodeNotInitialised("no node in this data folder: run `yipanqi init --node-id … --name …` first")
    label = node.active_keyid.split("/", 1)[1]
    path = private_key_path(keys_dir, label)
    if not path.exists():
        raise NodeNotInitialised(f"private key {path} is missing")
    return NodeSigner(node.node_id, node.name, node.active_keyid, read_private_key(path))


def node_keys(session: Session) -> list[NodeKey]:
    return list(session.exec(select(NodeKey).order_by(NodeKey.keyid)).all())
