"""预警: the open items likely to miss their deadline, why, and how well last month's warnings did.

Thin: the estimates are ``service.sla.warnings.forecast`` (read only); the warnings are recorded
when first raised by the scheduler's sweep (``early_warning_job``), whose records this page shows.
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.clock import utcnow
from service.console.auth import PREFIX, READERS, Reader
from service.console.templating import add_nav, render
from service.db import SessionDep
from service.models import Direction, ItemType
from service.sla.deadlines import SHANGHAI
from service.sla.report import previous_month
from service.sla.warnings import DIRECTION_NAMES, Forecast, fmt_days, forecast, prediction_quality, raised

router = APIRouter(prefix=PREFIX, include_in_schema=False)
add_nav(50, "预警", f"{PREFIX}/warnings", "可能逾期的待办与催办事项，提前几天提示", READERS)

LINKS = {
    ItemType.verification: f"{PREFIX}/cases/{{id}}",
    ItemType.notification: f"{PREFIX}/notifications/{{id}}",
}
STATUS_NAMES = {
    "received": "待签收",
    "acknowledged": "已签收",
    "delivered": "已送达",
}


def _row(f: Forecast, first_raised: dict[tuple[ItemType, int], object]) -> dict[str, object]:
    status = STATUS_NAMES.get(f.status, f.status)
    if f.item_type == ItemType.notification:
        status = "待确认接收" if f.direction == Direction.incoming else "待对方确认"
    return {
        "href": LINKS[f.item_type].format(id=f.item_id),
        "item": f"{f.label} {f.item_id}",
        "peer": f"{f.peer_name}（{f.peer}）" if f.peer_name != f.peer else f.peer,
        "status": status,
        "due_at": f.due_at,
        "remaining": fmt_days(f.remaining_days),
        "urgent": f.remaining_days <= 3,
        "probability": "历史不足" if f.probability is None else f"{f.probability:.0%}",
        "raised_at": first_raised.get((f.item_type, f.item_id)),
        "reason": f.reason,
    }


@router.get("/warnings")
def warnings_page(request: Request, user: Reader, session: SessionDep) -> HTMLResponse:
    now = utcnow()
    outlook = forecast(session, now)
    first_raised: dict[tuple[ItemType, int], object] = dict(
        raised(session, [(f.item_type, f.item_id) for f in outlook.flagged])
    )
    sides = [
        {
            "id": direction.value,
            "title": DIRECTION_NAMES[direction],
            "hint": "本节点应办的协查（签收、反馈）与通报（确认接收）"
            if direction == Direction.incoming
            else "本节点发出、等待对方反馈或确认的事项：可提前催办",
            "rows": [_row(f, first_raised) for f in outlook.flagged if f.direction == direction],
        }
        for direction in (Direction.incoming, Direction.outgoing)
    ]
    thin = Counter(
        (f.peer_name if f.direction == Direction.outgoing else "本节点", f.label, f.history)
        for f in outlook.unpredicted
    )
    last = previous_month(now.astimezone(SHANGHAI).date())
    context = {
        "sides": sides,
        "checked": outlook.checked,
        "flagged": len(outlook.flagged),
        "policy": outlook.policy,
        "thin": sorted(thin.items()),
        "quality": prediction_quality(session, last),
        "now": now,
    }
    return render(request, "warnings/index.html", context, user=user)
