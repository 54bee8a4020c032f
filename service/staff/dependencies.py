"""``CurrentStaff`` and role checks for the staff API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.db import SessionDep
from service.errors import DomainError, NotAuthenticated
from service.models import Role, Staff
from service.staff.service import authenticate

_bearer = HTTPBearer(auto_error=False, description="token from `yipanqi staff add`")


class RoleForbidden(DomainError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


def current_staff(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Staff:
    if credentials is None:
        raise NotAuthenticated("Authorization: Bearer <token> is required")
    return authenticate(session, credentials.credentials)


CurrentStaff = Annotated[Staff, Depends(current_staff)]


def require(*roles: Role) -> Callable[[Staff], Staff]:
    def check(staff: CurrentStaff) -> Staff:
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
