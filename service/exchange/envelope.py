"""The envelope every peer message travels in, and its exact byte form."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from service.sla.deadlines import SHANGHAI
from service.subjects import NodeId

P = TypeVar("P", bound=BaseModel)


def _utc_representable(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00-05:00 is past the last UTC instant Python has
        raise ValueError("must lie between the years 1 and 9999 in UTC") from exc
    return value


# A time in a peer message: with its UTC offset, and storable (the database keeps UTC).
PeerDatetime = Annotated[AwareDatetime, AfterValidator(_utc_representable)]


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid")

    message_id: UUID
    type: str
    sender: NodeId
    recipient: NodeId
    sent_at: PeerDatetime
    correlation_id: UUID | None
    payload: P


class Receipt(BaseModel):
    """The receiver's signed answer to an asynchronous message."""

    model_config = ConfigDict(extra="forbid")

    message_id: UUID
    status: Literal["accepted", "duplicate"]
    received_at: AwareDatetime
    digest: str = Field(description="Content-Digest of the request body")
    due_at: AwareDatetime | None


def canonical_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, keys in the order given (as the protocol's worked example)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def utc_text(value: datetime) -> str:
    """``2026-11-22T01:30:01Z``: UTC, whole seconds."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def envelope_body(
    *,
    message_id: UUID,
    type: str,
    sender: str,
    recipient: str,
    sent_at: datetime,
    correlation_id: UUID | None,
    payload: BaseModel,
) -> bytes:
    return canonical_json(
        {
            "message_id": str(message_id),
            "type": type,
            "sender": sender,
            "recipient": recipient,
            "sent_at": sent_at.astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
            "correlation_id": str(correlation_id) if correlation_id else None,
            "payload": payload.model_dump(mode="json"),
        }
    )


def receipt_body(
    *, message_id: str, status: str, received_at: datetime, digest: str, due_at: datetime | None
) -> bytes:
    return canonical_json(
        {
            "message_id": message_id,
            "status": status,
            "received_at": _receipt_time(received_at),
            "digest": digest,
            "due_at": _receipt_time(due_at) if due_at else None,
        }
    )


@lru_cache(maxsize=256)
def _receipt_time(value: datetime) -> str:
    """``utc_text``, remembered: a batch's receipts share their received_at and a few due_at."""
    return utc_text(value)
