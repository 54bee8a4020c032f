"""This node's identity and its own signing keys (private keys live in files, not here)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from service.models.base import utc_field


class LocalNode(SQLModel, table=True):
    __tablename__ = "local_node"

    node_id: str = Field(primary_key=True, max_length=6)
    name: str = Field(max_length=64)
    active_keyid: str = Field(max_length=40)
    created_at: datetime = utc_field(default_now=True)


class NodeKey(SQLModel, table=True):
    """A public key of this node; the private half is ``<data_dir>/keys/<label>.pem``."""

    __tablename__ = "node_key"

    keyid: str = Field(primary_key=True, max_length=40)
    public_key: str = Field(max_length=64)
    not_before: datetime = utc_field()
    not_after: datetime | None = utc_field(nullable=True)
