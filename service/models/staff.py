"""Staff accounts of the county bureau: bearer tokens for scripts and passwords for the console,
both stored only as argon2id hashes; console sessions and the password history.

Roles (等保 2.0 separation of duties, docs/security/roles.md): an account holds one or more roles
(``roles``); admin manages the system and handles no case unless the account holds a case role too.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from service.models.base import utc_field


class Role(StrEnum):
    operator = "operator"  # 经办人: answers and sends
    supervisor = "supervisor"  # 负责人: operator's rights, plus escalations
    auditor = "auditor"  # 审计: reads only
    admin = "admin"  # 管理员: accounts, directory, dead messages — no case work of its own


# The principal role (``Staff.role``) of an account holding several: its strongest case role.
CASE_ROLES = (Role.supervisor, Role.operator, Role.auditor)


def principal_role(roles: frozenset[Role]) -> Role:
    for role in CASE_ROLES:
        if role in roles:
            return role
    return Role.admin


def roles_text(roles: frozenset[Role]) -> str:
    """The ``roles`` column: the role names, sorted, comma-separated (``admin,supervisor``)."""
    return ",".join(sorted(role.value for role in roles))


class Staff(SQLModel, table=True):
    __tablename__ = "staff"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=64)
    # ``roles`` decides what the account may do; ``role`` is its principal role (principal_role()),
    # kept in step with it for display and for the checks that take one role (notices, assignees).
    role: Role = Field(max_length=16)
    roles: str = Field(default="", max_length=64)  # roles_text(); "" on a row from before 0013: role
    token_hash: str = Field(max_length=256)
    token_expires_at: datetime | None = utc_field(nullable=True)  # None: a token that never expires
    token_revoked_at: datetime | None = utc_field(nullable=True)  # set: refused until a new token
    active: bool = True
    created_at: datetime = utc_field(default_now=True)
    # The console (service/console/): no password until `yipanqi staff password` or an admin sets one.
    password_hash: str | None = Field(default=None, max_length=256)
    password_changed_at: datetime | None = utc_field(nullable=True)
    must_change_password: bool = True  # a password an admin set is changed at the first sign-in
    failed_logins: int = 0  # wrong passwords in a row
    locked_until: datetime | None = utc_field(nullable=True)

    @property
    def role_set(self) -> frozenset[Role]:
        """The roles the account holds (at least its principal role)."""
        held = frozenset(Role(name) for name in self.roles.split(",") if name in Role.__members__)
        return held or frozenset({self.role})

    def holds(self, *roles: Role) -> bool:
        """Whether the account holds any of ``roles``."""
        return not self.role_set.isdisjoint(roles)


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
