"""``CurrentStaff`` and role checks for the staff API.

Separation of duties (等保 2.0, docs/security/roles.md): an account may hold several roles and a check
passes when it holds any of the roles named. Admin (管理员) manages the system — accounts, peers and
keys, the outbox — and is not among the readers or actors of cases: an admin who also handles
cases holds a case role as well.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import DomainError, NotAuthenticated
from service.models import Role, Staff
from service.models.staff import roles_text
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
        if not staff.holds(*roles):
            raise RoleForbidden(f"roles {roles_text(staff.role_set)} may not do this")
        return staff

    return check


# Case work: reading cases, people, certificates, births, notices and reports.
READERS = (Role.operator, Role.supervisor, Role.auditor)
# Case work that changes something: send and answer 协查 and 通报, import, register, look up.
ACTORS = (Role.operator, Role.supervisor)
Reader = Annotated[Staff, Depends(require(*READERS))]
Actor = Annotated[Staff, Depends(require(*ACTORS))]
# 负责人: decisions beyond day-to-day answering (merging register records, deciding reviews).
Supervisor = Annotated[Staff, Depends(require(Role.supervisor))]
# 管理员: the system (accounts, peers and keys, the outbox), never cases.
Admin = Annotated[Staff, Depends(require(Role.admin))]
