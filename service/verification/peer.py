"""The 协查 rows of docs/protocol.md's endpoint table, wired to this domain's handlers."""

from __future__ import annotations

from service.exchange.inbox import PeerEndpoint
from service.verification import service
from service.verification.schemas import AckPayload, ReplyPayload, RequestPayload

ENDPOINTS = (
    PeerEndpoint(
        path="/verification-requests",
        message_type=service.REQUEST,
        payload=RequestPayload,
        handle=service.receive_request,
        on_receipt=service.on_request_receipt,
        summary="协查请求: a verification request",
    ),
    PeerEndpoint(
        path="/verification-requests/{request_id}/ack",
        message_type=service.ACK,
        payload=AckPayload,
        handle=service.receive_ack,
        summary="签收: the request is in the origin's queue",
    ),
    PeerEndpoint(
        path="/verification-requests/{request_id}/reply",
        message_type=service.REPLY,
        payload=ReplyPayload,
        handle=service.receive_reply,
        on_receipt=service.on_reply_receipt,
        summary="协查反馈: the answer",
    ),
)
