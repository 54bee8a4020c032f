"""Staff accounts of the county bureau (bearer tokens, stored only as argon2 hashes)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from service.models.base import utc_field


class Role(StrEnum):
    operator = "operator"  # 经办人: answers and sends
    supervisor = "supervisor"  # 负责人: operator's rights, plus escalations
    auditor = "auditor"  # 审计: reads only
    admin = "admin"  # 管理员: accounts, directory, dead messages


class Staff(SQLModel, table=True):
    __tablename__ = "staff"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=64)
    role: Role = Field(max_length=16)
    token_hash: str = Field(max_length=256)
    active: bool = True
    created_at: datetime = utc_field(default_now=True)
