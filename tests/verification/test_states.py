"""The 协查 state machine: every allowed move, and every other one refused."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import cast

import pytest

from service.errors import InvalidState
from service.models import CaseStatus, VerificationCase
from service.verification import states

S = CaseStatus
ALLOWED = {
    (S.queued, S.delivered),
    (S.queued, S.acknowledged),
    (S.queued, S.answered),
    (S.delivered, S.acknowledged),
    (S.delivered, S.answered),
    (S.received, S.acknowledged),
    (S.received, S.answered),
    (S.acknowledged, S.answered),
}


@pytest.mark.parametrize(("start", "end"), list(itertools.product(S, S)))
def test_moves(start: CaseStatus, end: CaseStatus) -> None:
    case = cast(VerificationCase, SimpleNamespace(status=start))
    if (start, end) in ALLOWED:
        states.move(case, end)
        assert case.status == end
    else:
        with pytest.raises(InvalidState):
            states.move(case, end)
        assert case.status == start


def test_answered_is_final() -> None:
    assert states.ALLOWED[S.answered] == frozenset()
