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
        handle_many=service.receive_requests,
        on_receipt=service.on_request_receipt,
        summary="协查请求: a verification request",
    ),
    PeerEndpoint(
        path="/verification-requests/{request_id}/ack",
        message_type=service.ACK,
        payload=AckPayload,
        handle=service.receive_ack,
        handle_many=service.receive_acks,
        summary="签收: the request is in the origin's queue",
    ),
    PeerEndpoint(
        path="/verification-requests/{request_id}/reply",
        message_type=service.REPLY,
        payload=ReplyPayload,
        handle=service.receive_reply,
        handle_many=service.receive_replies,
        on_receipt=service.on_reply_receipt,
        summary="协查反馈: the answer",
    ),
)
