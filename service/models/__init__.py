"""SQLModel table classes; importing this package registers every table on the metadata."""

from service.models.directory import Peer, PeerKey
from service.models.exchange import InboxMessage, OutboxMessage, OutboxStatus, SeenNonce
from service.models.node import LocalNode, NodeKey
from service.models.staff import Role, Staff
from service.models.verification import (
    CaseStatus,
    Direction,
    Outcome,
    Priority,
    Sex,
    Topic,
    VerificationCase,
)

__all__ = [
    "CaseStatus",
    "Direction",
    "InboxMessage",
    "LocalNode",
    "NodeKey",
    "OutboxMessage",
    "OutboxStatus",
    "Outcome",
    "Peer",
    "PeerKey",
    "Priority",
    "Role",
    "SeenNonce",
    "Sex",
    "Staff",
    "Topic",
    "VerificationCase",
]
