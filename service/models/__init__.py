"""SQLModel table classes; importing this package registers every table on the metadata."""

from service.models.births import BirthRegistration, BirthRegistrationStatus
from service.models.certificates import (
    Certificate,
    CertificateCheck,
    CertificateStatus,
    CertificateVersion,
    LookupLog,
    LookupPurpose,
    LookupStanding,
)
from service.models.directory import DirectoryDocument, Peer, PeerKey
from service.models.evidence import (
    EvidenceBatchBody,
    EvidenceCheckpoint,
    EvidenceEntry,
    EvidenceHead,
    EvidenceSentAnswer,
    EvidenceSentRequest,
)
from service.models.exchange import InboxMessage, OutboxMessage, OutboxStatus, RateLimitHit, SeenNonce
from service.models.idempotency import IdempotencyKey
from service.models.node import LocalNode, NodeKey
from service.models.notifications import Notification, NotificationKind, NotificationStatus
from service.models.people import Child, ContraceptionMethod, MaritalStatus, Person
from service.models.sla import EarlyWarning, ItemType, MonthlyReport, NoticeKind, StaffNotice
from service.models.staff import ConsoleSession, PasswordHistory, Role, Staff
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
    "BirthRegistration",
    "BirthRegistrationStatus",
    "CaseStatus",
    "Certificate",
    "CertificateCheck",
    "CertificateStatus",
    "CertificateVersion",
    "Child",
    "ConsoleSession",
    "ContraceptionMethod",
    "Direction",
    "DirectoryDocument",
    "EarlyWarning",
    "EvidenceBatchBody",
    "EvidenceCheckpoint",
    "EvidenceEntry",
    "EvidenceHead",
    "EvidenceSentAnswer",
    "EvidenceSentRequest",
    "IdempotencyKey",
    "InboxMessage",
    "ItemType",
    "LocalNode",
    "LookupLog",
    "LookupPurpose",
    "LookupStanding",
    "MaritalStatus",
    "MonthlyReport",
    "NodeKey",
    "NoticeKind",
    "Notification",
    "NotificationKind",
    "NotificationStatus",
    "OutboxMessage",
    "OutboxStatus",
    "Outcome",
    "PasswordHistory",
    "Peer",
    "PeerKey",
    "Person",
    "Priority",
    "RateLimitHit",
    "Role",
    "SeenNonce",
    "Sex",
    "Staff",
    "StaffNotice",
    "Topic",
    "VerificationCase",
]
