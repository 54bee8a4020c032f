"""查看完整身份证号: a full ID number is shown for a reason from a fixed list, and the reveal is audited.

Reads (staff API and console alike) carry the number masked; the full number comes only from a
reveal: ``POST /api/v1/people/{id}/reveal``, ``/api/v1/verification-requests/{id}/reveal``,
``/api/v1/notifications/{id}/reveal`` and the console's reveal forms, all through ``revealed()``.
The audit line names the account, the record and the reason's code — never the number, never free
text (it could carry a name). An operator or supervisor may reveal (``Actor``); an auditor may not.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from service.models import Staff
from service.staff.service import audit


class RevealReason(StrEnum):
    """Why a full ID number is needed (查看完整身份证号的事由), logged with the reveal."""

    identity = "identity"
    service = "service"
    verification = "verification"
    correction = "correction"


# The reasons, with the console's label for each.
REVEAL_REASONS: dict[str, str] = {
    RevealReason.identity: "核实本人身份",
    RevealReason.service: "办理服务事项",
    RevealReason.verification: "协查核对",
    RevealReason.correction: "更正登记信息",
}


class RevealRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: RevealReason = Field(
        description="why the full number is needed: identity 核实本人身份, service 办理服务事项, "
        "verification 协查核对, correction 更正登记信息 (logged with the reveal)"
    )


class RevealedIdNumber(BaseModel):
    id_number: str = Field(description="the full ID number, in this answer only")
    reason: RevealReason


def revealed(
    staff: Staff, action: str, target: str, reason: RevealReason, id_number: str
) -> RevealedIdNumber:
    """Audit the reveal (``target`` and the reason, never the number) and answer the number."""
    audit(staff, action, f"{target} reason:{reason.value}")
    return RevealedIdNumber(id_number=id_number, reason=reason)
