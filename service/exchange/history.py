"""A conversation's messages (a request and what answers it), as staff read them with the case."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, select

from service.models import InboxMessage, OutboxMessage


class MessageRead(BaseModel):
    message_id: str
    type: str
    direction: str
    status: str
    at: datetime
    payload: dict[str, Any]
    receipt: dict[str, Any] | None = None
    last_error: str | None = None


def conversation(session: Session, conversation_id: str, phase: Mapping[str, int]) -> list[MessageRead]:
    """Sent and received messages of one conversation, in ``phase`` order (type → rank), then time.

    Received times are whole seconds (the receipt's), so time alone could put an answer first.
    """
    sent = session.exec(select(OutboxMessage).where(OutboxMessage.conversation_id == conversation_id))
    received = session.exec(select(InboxMessage).where(InboxMessage.conversation_id == conversation_id))
    messages = [_sent(m) for m in sent] + [_received(m) for m in received]
    messages.sort(key=lambda m: (phase.get(m.type, len(phase)), m.at))
    return messages


def _sent(m: OutboxMessage) -> MessageRead:
    return MessageRead(
        message_id=m.message_id,
        type=m.type,
        direction="sent",
        status=m.status.value,
        at=m.created_at,
        payload=_payload(m.body),
        receipt=json.loads(m.receipt_body) if m.receipt_body else None,
        last_error=m.last_error,
    )


def _received(m: InboxMessage) -> MessageRead:
    return MessageRead(
        message_id=m.message_id,
        type=m.type,
        direction="received",
        status="received",
        at=m.received_at,
        payload=_payload(m.body),
    )


def _payload(body: bytes) -> dict[str, Any]:
    if not body:  # emptied past its retention (service/evidence/); its digest stays in the evidence log
        return {}
    payload: dict[str, Any] = json.loads(body)["payload"]
    return payload


_KEYID = re.compile(r';keyid="([^"]{1,40})"')


def signing_keys(session: Session, conversation_id: str) -> dict[str, str]:
    """Who signed what in a conversation: message_id → the keyid that signed the message received,
    or the peer's signed receipt of a message sent (each checked when it arrived, before storing)."""
    keys: dict[str, str] = {}
    received = session.exec(
        select(col(InboxMessage.message_id), col(InboxMessage.keyid)).where(
            InboxMessage.conversation_id == conversation_id
        )
    )
    keys.update(dict(received.all()))
    sent = session.exec(
        select(col(OutboxMessage.message_id), col(OutboxMessage.receipt_signature_input)).where(
            OutboxMessage.conversation_id == conversation_id
        )
    )
    for message_id, signature_input in sent:
        match = _KEYID.search(signature_input or "")
        if match:
            keys[message_id] = match.group(1)
    return keys
