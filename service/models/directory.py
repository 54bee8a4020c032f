"""The local directory: peers this node trusts and their keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Text
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


class DirectoryDocument(SQLModel, table=True):
    """A signed directory imported (service/directory/signed.py): the highest version is in force.

    Every imported version is kept as it was signed (the record of which keys were trusted when)."""

    __tablename__ = "directory_document"

    version: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    digest: str = Field(max_length=64)  # SHA-256, hex, of the signed (canonical) directory bytes
    issuer: str = Field(max_length=128)
    authority_keyid: str = Field(max_length=64)  # the trusted key whose signature was checked
    issued_at: datetime = utc_field()
    expires_at: datetime = utc_field()
    imported_at: datetime = utc_field()
    source: str = Field(max_length=512)  # "file" or the URL it was fetched from
    document: str = Field(sa_type=Text)  # the signed file, canonical JSON (RFC 8785)
