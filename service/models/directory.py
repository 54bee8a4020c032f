"""The local directory: peers this node trusts and their keys."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from service.models.base import utc_field


class Peer(SQLModel, table=True):
    __tablename__ = "peer"

    node_id: str = Field(primary_key=True, max_length=6)
    name: str = Field(max_length=64)
    url: str = Field(max_length=512)
    created_at: datetime = utc_field(default_now=True)


class PeerKey(SQLModel, table=True):
    __tablename__ = "peer_key"

    keyid: str = Field(primary_key=True, max_length=40)
    node_id: str = Field(foreign_key="peer.node_id", index=True, max_length=6, ondelete="CASCADE")
    public_key: str = Field(max_length=64)
    not_before: datetime | None = utc_field(nullable=True)
    not_after: datetime | None = utc_field(nullable=True)
