"""``CurrentStaff`` and role checks for the staff API."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import DomainError, NotAuthenticated
from service.models import Role, Staff
from service.staff.service import StaffAccounts

_bearer = HTTPBearer(auto_error=False, description="token from `yipanqi staff add`")


class RoleForbidden(DomainError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


def current_staff(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Staff:
    """The account from memory (StaffAccounts): no database connection is held for this."""
    if credentials is None:
        raise NotAuthenticated("Authorization: Bearer <token> is required")
    accounts: StaffAccounts = request.app.state.staff_accounts
    source = request.client.host if request.client else "-"
    return accounts.authenticate(credentials.credentials, source)


CurrentStaff = Annotated[Staff, Depends(current_staff)]


def require(*roles: Role) -> Callable[[Staff], Coroutine[Any, Any, Staff]]:
    async def check(staff: CurrentStaff) -> Staff:  # on the event loop: no thread for a comparison
        if staff.role not in roles:
            raise RoleForbidden(f"role {staff.role.value} may not do this")
        return staff

    return check


READERS = (Role.operator, Role.supervisor, Role.auditor, Role.admin)
ACTORS = (Role.operator, Role.supervisor, Role.admin)
Reader = Annotated[Staff, Depends(require(*READERS))]
Actor = Annotated[Staff, Depends(require(*ACTORS))]
Admin = Annotated[Staff, Depends(require(Role.admin))]
# 负责人: decisions beyond day-to-day answering (merging register records, deciding reviews).
Supervisor = Annotated[Staff, Depends(require(Role.supervisor, Role.admin))]
