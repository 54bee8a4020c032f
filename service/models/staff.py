"""Staff accounts of the county bureau: bearer tokens for scripts and passwords for the console,
both stored only as argon2id hashes; console sessions and the password history."""

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
    # The console (service/console/): no password until `yipanqi staff password` or an admin sets one.
    password_hash: str | None = Field(default=None, max_length=256)
    password_changed_at: datetime | None = utc_field(nullable=True)
    must_change_password: bool = True  # a password an admin set is changed at the first sign-in
    failed_logins: int = 0  # wrong passwords in a row
    locked_until: datetime | None = utc_field(nullable=True)


class PasswordHistory(SQLModel, table=True):
    """The last passwords of an account (hashes), so a change cannot reuse them."""

    __tablename__ = "password_history"

    id: int | None = Field(default=None, primary_key=True)
    staff_id: int = Field(foreign_key="staff.id", index=True)
    password_hash: str = Field(max_length=256)
    created_at: datetime = utc_field(default_now=True)


class ConsoleSession(SQLModel, table=True):
    """A signed-in browser (登录会话). Only the SHA-256 of the cookie's secret is stored."""

    __tablename__ = "console_session"

    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the cookie value
    staff_id: int = Field(foreign_key="staff.id", index=True)
    created_at: datetime = utc_field()
    last_seen_at: datetime = utc_field()
    ended_at: datetime | None = utc_field(nullable=True)  # logout, revocation, password change
