"""The 协查 case state machine: which status may follow which."""

from __future__ import annotations

from service.errors import InvalidState
from service.models import CaseStatus, VerificationCase

S = CaseStatus
# Outgoing: queued → delivered → acknowledged → answered; a peer may ack or reply before we
# store its receipt (a crash between send and record), so those steps may be skipped.
# Incoming: received → acknowledged → answered, or straight to answered. Answered is final.
ALLOWED: dict[CaseStatus, frozenset[CaseStatus]] = {
    S.queued: frozenset({S.delivered, S.acknowledged, S.answered}),
    S.delivered: frozenset({S.acknowledged, S.answered}),
    S.received: frozenset({S.acknowledged, S.answered}),
    S.acknowledged: frozenset({S.answered}),
    S.answered: frozenset(),
}


def can_move(case: VerificationCase, to: CaseStatus) -> bool:
    return to in ALLOWED[case.status]


def move(case: VerificationCase, to: CaseStatus) -> None:
    if not can_move(case, to):
        raise InvalidState(f"a case that is {case.status.value} cannot become {to.value}")
    case.status = to
