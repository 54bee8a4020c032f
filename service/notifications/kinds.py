"""The kinds of 通报 (docs/protocol.md ``kind``), in a module of its own.

Here rather than in ``service.models`` because the settings (``notification_auto_ack_kinds``) name
them, and the models import the database layer, which imports the settings.
"""

from __future__ import annotations

from enum import StrEnum


class NotificationKind(StrEnum):
    contraception = "contraception"  # 避孕节育
    pregnancy = "pregnancy"  # 妊娠
    birth = "birth"  # 生育 (一孩)
    health_check = "health_check"  # 康检/三查
    arrival = "arrival"  # 流入
    departure = "departure"  # 流出
    health_record_transfer = "health_record_transfer"  # 健康档案转移
