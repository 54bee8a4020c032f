"""The 通报 rows of docs/protocol.md's endpoint table, wired to this domain's handlers."""

from __future__ import annotations

from service.exchange.inbox import PeerEndpoint
from service.notifications import service
from service.notifications.schemas import AckPayload, NotificationPayload

ENDPOINTS = (
    PeerEndpoint(
        path=service.PATH,
        message_type=service.NOTIFICATION,
        payload=NotificationPayload,
        handle=service.receive_notification,
        handle_many=service.receive_notifications,
        on_receipt=service.on_notification_receipt,
        on_receipts=service.on_notification_receipts,
        summary="通报: a notification of a service or event; its receipt's due_at is the ack deadline",
    ),
    PeerEndpoint(
        path=service.PATH + "/{notification_id}/ack",
        message_type=service.ACK,
        payload=AckPayload,
        handle=service.receive_ack,
        handle_many=service.receive_acks,
        summary="接收确认: the notification was acknowledged",
    ),
)
