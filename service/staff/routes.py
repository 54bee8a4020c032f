"""Staff API over the accounts (管理员 only): list, add, roles, tokens, deactivation.

A new token is made (argon2) before the transaction that stores it and is shown once, in that
answer. Every change is audited by ``service.staff.service`` after its commit. A revoked token or
a deactivated account stops working at once in this process and within
``YIPANQI_DIRECTORY_REFRESH_SECONDS`` in others (docs/storage.md, "From memory").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.clock import utcnow
from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.models import Role, Staff
from service.schemas import DbId
from service.staff import service
from service.staff.dependencies import Admin

router = APIRouter(prefix="/api/v1/staff", tags=["staff accounts"])

Username = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{2,64}$", description="2-64 of A-Z a-z 0-9 . _ -")]
Roles = Annotated[
    list[Role], Field(min_length=1, max_length=4, description="one or more roles the account holds")
]
TokenDays = Annotated[
    int, Field(ge=1, le=3650, description="the token's lifetime (default: YIPANQI_STAFF_TOKEN_DAYS)")
]
TOKEN_STATES = "active, expired, revoked or deactivated"


class StaffRead(BaseModel):
    id: int
    username: str
    roles: list[Role] = Field(description="what the account may do")
    role: Role = Field(description="its principal role (the strongest case role it holds, else admin)")
    active: bool
    token_state: str = Field(description=TOKEN_STATES)
    token_expires_at: datetime | None
    token_revoked_at: datetime | None
    has_password: bool = Field(description="whether a console password is set")
    created_at: datetime

    @classmethod
    def of(cls, staff: Staff, now: datetime) -> StaffRead:
        assert staff.id is not None
        return cls(
            id=staff.id,
            username=staff.username,
            roles=sorted(staff.role_set),
            role=staff.role,
            active=staff.active,
            token_state=service.token_state(staff, now),
            token_expires_at=staff.token_expires_at,
            token_revoked_at=staff.token_revoked_at,
            has_password=staff.password_hash is not None,
            created_at=staff.created_at,
        )


class StaffPage(BaseModel):
    items: list[StaffRead]


class StaffCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    roles: Roles
    token_days: TokenDays | None = None


class RolesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: Roles


class TokenIssue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_days: TokenDays | None = None


class TokenIssued(BaseModel):
    account: StaffRead
    token: str = Field(description="the bearer token, shown this once and never stored")


@router.get("", response_model=StaffPage, responses=staff_errors())
def list_accounts(session: SessionDep, _staff: Admin) -> StaffPage:
    now = utcnow()
    return StaffPage(items=[StaffRead.of(s, now) for s in service.list_staff(session)])


@router.post("", status_code=201, response_model=TokenIssued, responses=staff_errors(422))
def add_account(data: StaffCreate, staff: Admin) -> TokenIssued:
    """A new account and its bearer token (shown once)."""
    new = service.new_token()  # argon2 before the transaction
    with transaction() as tx:
        account, token = service.create_staff(
            tx,
            username=data.username,
            roles=data.roles,
            token_days=data.token_days,
            by=staff.username,
            new=new,
        )
        result = TokenIssued(account=StaffRead.of(account, utcnow()), token=token)
    return result


@router.get("/{staff_id:int}", response_model=StaffRead, responses=staff_errors(404, 422))
def read_account(staff_id: DbId, session: SessionDep, _staff: Admin) -> StaffRead:
    return StaffRead.of(service.get_staff(session, staff_id), utcnow())


@router.put("/{staff_id:int}/roles", response_model=StaffRead, responses=staff_errors(404, 409, 422))
def set_roles(staff_id: DbId, data: RolesUpdate, staff: Admin) -> StaffRead:
    """The roles the account holds from now on (409: an admin dropping their own admin role)."""
    with transaction() as tx:
        account = service.set_roles(tx, staff_id, data.roles, by=staff.id, by_name=staff.username)
        result = StaffRead.of(account, utcnow())
    return result


def _not_own(staff: Staff, staff_id: int) -> None:
    """An admin's own account is changed by another admin (or the CLI), never through its own token."""
    if staff.id == staff_id:
        raise service.OwnAccount("an admin cannot change their own account's token through it")


@router.post("/{staff_id:int}/token", response_model=TokenIssued, responses=staff_errors(404, 409, 422))
def issue_token(staff_id: DbId, data: TokenIssue, staff: Admin) -> TokenIssued:
    """A new bearer token (shown once); the old one stops working (409: one's own account)."""
    _not_own(staff, staff_id)
    new = service.new_token()  # argon2 before the transaction
    with transaction() as tx:
        token = service.replace_token(tx, staff_id, new, by=staff.username, token_days=data.token_days)
        result = TokenIssued(account=StaffRead.of(service.get_staff(tx, staff_id), utcnow()), token=token)
    return result


@router.post("/{staff_id:int}/revoke", response_model=StaffRead, responses=staff_errors(404, 409, 422))
def revoke_token(staff_id: DbId, staff: Admin) -> StaffRead:
    """The account's bearer token stops working; no new one is issued (409: one's own account)."""
    _not_own(staff, staff_id)
    now = utcnow()
    with transaction() as tx:
        result = StaffRead.of(service.revoke_token(tx, staff_id, by=staff.username, now=now), now)
    return result


@router.post("/{staff_id:int}/deactivate", response_model=StaffRead, responses=staff_errors(404, 409, 422))
def deactivate(staff_id: DbId, staff: Admin) -> StaffRead:
    """停用: the token and the console sessions end at once (409: one's own account)."""
    now = utcnow()
    with transaction() as tx:
        account = service.set_active(tx, staff_id, False, by=staff.id, now=now, by_name=staff.username)
        result = StaffRead.of(account, now)
    return result


@router.post("/{staff_id:int}/reactivate", response_model=StaffRead, responses=staff_errors(404, 422))
def reactivate(staff_id: DbId, staff: Admin) -> StaffRead:
    now = utcnow()
    with transaction() as tx:
        account = service.set_active(tx, staff_id, True, by=staff.id, now=now, by_name=staff.username)
        result = StaffRead.of(account, now)
    return result
