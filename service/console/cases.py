"""A 协查 case page and a 通报 page (协查详情、通报详情): facts, deadline, history, and the forms.

签收 (acknowledge), 反馈 (reply), 接收确认 and 领取/指派 call the same service functions as the staff
API; whether a case can still be answered is decided by the service inside its transaction (a
conditional UPDATE), so two tabs or two staff answering at once send one reply, and the second gets
a clear message (409). The full ID number is shown only on a POST with a reason, to a role that
acts on the case, and is never put in a URL or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from service import names
from service.clock import utcnow
from service.config import Settings
from service.console.auth import (
    PREFIX,
    Actor,
    ConsoleForbidden,
    ConsoleUser,
    Reader,
    audit,
    see_other,
    source,
)
from service.console.templating import SHANGHAI, render
from service.db import read_session, transaction
from service.directory.service import peer_names as directory_peer_names
from service.errors import Conflict, InvalidState, NotFound, ValidationFailed
from service.exchange.history import MessageRead, signing_keys
from service.exchange.security import SignerDep
from service.models import (
    CaseStatus,
    Direction,
    Notification,
    NotificationStatus,
    Outcome,
    Role,
    VerificationCase,
)
from service.notifications import service as notifications
from service.schemas import DB_ID_MAX
from service.sla.deadlines import DeadlineRule, due_at, is_working_day
from service.staff.reveal import REVEAL_REASONS, RevealReason, revealed
from service.verification import service as verification
from service.verification.schemas import AckCreate, ReplyCreate

router = APIRouter(prefix=PREFIX, include_in_schema=False)
# Generous limits at the form layer: the real checks (with a message next to the field) come after.
Field_ = Annotated[str, Form(max_length=10_000)]

# --- Chinese labels ----------------------------------------------------------------------------

TOPIC_NAMES = names.TOPICS
PRIORITY_NAMES = names.PRIORITIES
OUTCOME_NAMES = names.OUTCOMES
CASE_STATUS_NAMES = names.CASE_STATUSES
KIND_NAMES = names.KINDS
NOTIFICATION_STATUS_NAMES = names.NOTIFICATION_STATUSES
MESSAGE_NAMES = {
    verification.REQUEST: "协查请求",
    verification.ACK: "签收",
    verification.REPLY: "协查反馈",
    notifications.NOTIFICATION: "通报",
    notifications.ACK: "接收确认",
}
SEND_STATUS_NAMES = {
    "pending": "待发送（重试中）",
    "delivered": "已送达",
    "dead": "发送失败",
    "received": "已收到",
}
SEX_NAMES = names.SEXES
DETAIL_NAMES = {
    "method": "措施",
    "since": "开始日期",
    "confirmed_on": "确诊日期",
    "expected_delivery": "预产期",
    "weeks": "孕周",
    "birth_date": "出生日期",
    "birth_order": "孩次",
    "sex": "性别",
    "birth_registered": "已生育登记",
    "checked_on": "检查日期",
    "iud": "查环",
    "pregnancy": "查孕",
    "disease": "查病",
    "arrived_on": "流入日期",
    "address_district": "现居住地区划",
    "departed_on": "流出日期",
    "destination_node": "流入地节点",
    "record_no": "档案编号",
    "institution": "接收机构",
    "transferred_on": "转移日期",
}
DETAIL_VALUES = {
    "iud": "宫内节育器",
    "female_sterilization": "女性绝育",
    "male_sterilization": "男性绝育",
    "implant": "皮下埋植",
    "injection": "避孕针",
    "oral": "口服药",
    "condom": "避孕套",
    "other": "其他",
    "none": "无",
    "normal": "正常",
    "displaced": "移位",
    "absent": "未见",
    "not_applicable": "不适用",
    "positive": "阳性",
    "negative": "阴性",
    "found": "发现疾病",
    "referred": "已转诊",
    "F": "女",
    "M": "男",
    True: "是",
    False: "否",
}
LABELS = {
    "TOPIC_NAMES": TOPIC_NAMES,
    "PRIORITY_NAMES": PRIORITY_NAMES,
    "OUTCOME_NAMES": OUTCOME_NAMES,
    "CASE_STATUS_NAMES": CASE_STATUS_NAMES,
    "KIND_NAMES": KIND_NAMES,
    "NOTIFICATION_STATUS_NAMES": NOTIFICATION_STATUS_NAMES,
    "MESSAGE_NAMES": MESSAGE_NAMES,
    "SEND_STATUS_NAMES": SEND_STATUS_NAMES,
    "SEX_NAMES": SEX_NAMES,
}

# --- deadlines ----------------------------------------------------------------------------------


def due_day(value: datetime) -> date:
    """A deadline is the end (24:00) of a Shanghai day: that day."""
    return (value.astimezone(SHANGHAI) - timedelta(microseconds=1)).date()


def rule_text(rule: DeadlineRule) -> str:
    return f"{rule.days} 个工作日" if rule.unit == "working" else f"{rule.days} 天（自然日）"


@dataclass(frozen=True)
class Deadline:
    """How a deadline was reached and where it stands now (for the page; times in Beijing time)."""

    received_at: datetime | None
    due_at: datetime | None
    due_day: date | None
    rule: str | None  # "15 个工作日"; None when the other node set it (an outgoing item)
    rule_matches: bool  # the rule of today's settings gives the stored due_at
    overdue_days: int  # whole days past the due day (0: not overdue)
    days_left: int  # calendar days from today to the due day, both counted (0 when overdue)
    working_days_left: int
    state: str  # "overdue", "due-soon" or ""


def deadline(received_at: datetime | None, due: datetime | None, rule: DeadlineRule | None) -> Deadline:
    now = utcnow()
    today = now.astimezone(SHANGHAI).date()
    if due is None:
        return Deadline(received_at, None, None, rule_text(rule) if rule else None, True, 0, 0, 0, "")
    last = due_day(due)
    matches = rule is None or received_at is None or due_at(received_at, rule) == due
    text = rule_text(rule) if rule else None
    if now >= due:
        return Deadline(received_at, due, last, text, matches, (today - last).days, 0, 0, "overdue")
    days = [today + timedelta(days=n) for n in range((last - today).days + 1)]
    working = sum(1 for d in days if is_working_day(d))
    state = "due-soon" if due - now <= DUE_SOON else ""
    return Deadline(received_at, due, last, text, matches, 0, len(days), working, state)


DUE_SOON = timedelta(days=3)

# --- shared helpers -----------------------------------------------------------------------------


def safe_back(value: str, fallback: str) -> str:
    """Where to go after a form: only a console page of this node (the 待办 list with its filters)."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or "\\" in value:
        return fallback
    return value


def peer_names() -> dict[str, str]:
    with read_session() as session:
        return directory_peer_names(session)


def assignees() -> list[str]:
    with read_session() as session:
        return verification.assignees(session)


def check_id(item_id: int) -> None:
    if not 1 <= item_id <= DB_ID_MAX:
        raise NotFound(f"no item {item_id}")


def assign_target(user: ConsoleUser, assignee: str) -> str:
    """领取 (nobody named: oneself) by any actor; 指派 to someone else by a supervisor or admin only."""
    wanted = assignee.strip() or user.staff.username
    if wanted != user.staff.username and user.role not in (Role.supervisor, Role.admin):
        raise ConsoleForbidden
    return wanted


def reason_error(reason: str) -> str | None:
    return None if reason in REVEAL_REASONS else "请选择查看完整身份证号的事由。"


def history(messages: list[MessageRead], keys: dict[str, str]) -> list[dict[str, Any]]:
    """The messages for the page: who signed each, its receipt, and only the payload's non-personal
    fields (a request's payload carries the subject's full ID number: it is not shown here)."""
    rows = []
    for m in messages:
        payload = m.payload
        receipt = m.receipt or {}
        rows.append(
            {
                "type": m.type,
                "direction": m.direction,
                "status": m.status,
                "at": m.at,
                "message_id": m.message_id,
                "keyid": keys.get(m.message_id),
                "receipt_status": receipt.get("status"),
                "receipt_received_at": _instant(receipt.get("received_at")),
                "last_error": m.last_error,
                "question": payload.get("question"),
                "outcome": payload.get("outcome"),
                "findings": payload.get("findings"),
                "promised_by": payload.get("promised_by"),
                "kind": payload.get("kind"),
            }
        )
    return rows


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --- 协查 --------------------------------------------------------------------------------------


def _case_context(request: Request, case_id: int) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    with read_session() as session:
        row = session.get(VerificationCase, case_id)
        if row is None:
            raise NotFound(f"no case {case_id}")
        case = verification.get_case(session, case_id)
        keys = signing_keys(session, row.request_message_id)
        staff_names = verification.assignees(session)
    rule = (
        verification.deadline_rule(settings, case.topic, case.priority)
        if case.direction == Direction.incoming
        else None
    )
    return {
        **LABELS,
        "case": case,
        "row": row,
        "deadline": deadline(case.received_at, case.due_at, rule),
        "history": history(case.messages, keys),
        "peers": peer_names(),
        "assignees": staff_names,
        "outcomes": list(Outcome),
        "today": utcnow().astimezone(SHANGHAI).date(),
        "now": utcnow(),
        "errors": {},
        "form": {},
    }


def _case_page(
    request: Request, user: ConsoleUser, case_id: int, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    context = _case_context(request, case_id)
    context.update(extra)
    return render(request, "cases/case.html", context, user=user, status_code=status_code)


DONE = {
    "ack": "已签收，签收回执已发给对方。",
    "reply": "已反馈，答复已发给对方。",
    "assign": "已保存经办人。",
    "confirm": "已确认接收，确认已发给对方。",
}


@router.get("/cases/{case_id:int}")
def case_page(request: Request, case_id: int, user: Reader, done: str = "") -> HTMLResponse:
    check_id(case_id)
    response = _case_page(request, user, case_id, notice=DONE.get(done))
    audit("case_read", user.staff.username, source(request), case=case_id)
    return response


@router.post("/cases/{case_id:int}/reveal")
def reveal_case(request: Request, case_id: int, user: Actor, reason: Field_ = "") -> HTMLResponse:
    check_id(case_id)
    error = reason_error(reason)
    if error:
        return _case_page(request, user, case_id, 422, errors={"reason": error}, form={"reason": reason})
    context = _case_context(request, case_id)
    with read_session() as session:
        number = verification.subject_id_number(session, case_id)
    # The staff API's reveal (service.staff.reveal): the same audit, plus the console's own line.
    shown = revealed(user.staff, "verification.reveal_id", f"case:{case_id}", RevealReason(reason), number)
    audit("id_revealed", user.staff.username, source(request), case=case_id, reason=reason)
    context["revealed_id"] = shown.id_number
    return render(request, "cases/case.html", context, user=user)


def _case_conflict(case_id: int, action: str) -> str:
    with read_session() as session:
        row = session.get(VerificationCase, case_id)
        status = row.status if row is not None else None
    if status == CaseStatus.answered:
        if action == "reply":
            return "该协查已反馈，不能重复反馈。"
        return f"该协查已反馈办结，不能再{action_name(action)}。"
    if status == CaseStatus.acknowledged and action == "ack":
        return "该协查已签收，不能重复签收。"
    return "该协查的状态已变化，请查看最新状态后再操作。"


def action_name(action: str) -> str:
    return {"ack": "签收", "reply": "反馈", "assign": "指派"}.get(action, "操作")


@router.post("/cases/{case_id:int}/ack")
def acknowledge_case(
    request: Request, case_id: int, user: Actor, signer: SignerDep, promised_by: Field_ = ""
) -> Response:
    check_id(case_id)
    promised: date | None = None
    if promised_by.strip():
        try:
            promised = date.fromisoformat(promised_by.strip())
        except ValueError:
            promised = None
            error = "请按 年-月-日 填写日期，例如 2026-07-01。"
        else:
            today = utcnow().astimezone(SHANGHAI).date()
            error = "预计反馈日期不能早于今天。" if promised < today else ""
        if error:
            errors = {"promised_by": error}
            return _case_page(request, user, case_id, 422, errors=errors, form={"promised_by": promised_by})
    try:
        with transaction() as tx:
            verification.acknowledge(tx, signer, case_id, AckCreate(promised_by=promised))
    except InvalidState:
        return _case_page(request, user, case_id, 409, error=_case_conflict(case_id, "ack"))
    audit("case_acknowledged", user.staff.username, source(request), case=case_id)
    return see_other(f"{PREFIX}/cases/{case_id}?done=ack")


@router.post("/cases/{case_id:int}/reply")
def reply_case(
    request: Request,
    case_id: int,
    user: Actor,
    signer: SignerDep,
    outcome: Field_ = "",
    findings: Field_ = "",
) -> Response:
    check_id(case_id)
    form = {"outcome": outcome, "findings": findings}
    try:
        data = ReplyCreate.model_validate({"outcome": outcome, "findings": findings})
    except ValidationError as exc:
        return _case_page(request, user, case_id, 422, errors=_reply_errors(exc), form=form)
    try:
        with transaction() as tx:
            verification.reply(tx, signer, case_id, data)
    except InvalidState:
        return _case_page(request, user, case_id, 409, error=_case_conflict(case_id, "reply"))
    audit("case_replied", user.staff.username, source(request), case=case_id)
    return see_other(f"{PREFIX}/cases/{case_id}?done=reply")


def _reply_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if field == "outcome":
            errors["outcome"] = "请选择核实结果。"
        elif field == "findings":
            kind = error["type"]
            if kind == "string_too_short":
                errors["findings"] = "请填写核实情况。"
            elif kind == "string_too_long":
                errors["findings"] = "核实情况最多 2000 字。"
            else:
                errors["findings"] = "核实情况不能含控制字符或不可见字符。"
    return errors


@router.post("/cases/{case_id:int}/assign")
def assign_case(
    request: Request, case_id: int, user: Actor, assignee: Field_ = "", back: Field_ = ""
) -> Response:
    check_id(case_id)
    wanted = assign_target(user, assignee)
    try:
        with transaction() as tx:
            verification.assign_case(tx, case_id, wanted)
    except Conflict:
        return _case_page(request, user, case_id, 409, error=_case_conflict(case_id, "assign"))
    except ValidationFailed:
        return _case_page(request, user, case_id, 422, error="所选人员不是在岗的经办人或负责人。")
    audit("case_assigned", user.staff.username, source(request), case=case_id, assignee=wanted)
    return see_other(safe_back(back, f"{PREFIX}/cases/{case_id}?done=assign"))


# --- 通报 --------------------------------------------------------------------------------------


def _notification_context(case_id: int) -> dict[str, Any]:
    with read_session() as session:
        row = session.get(Notification, case_id)
        if row is None:
            raise NotFound(f"no notification {case_id}")
        item = notifications.get_notification(session, case_id)
        keys = signing_keys(session, row.message_id)
        staff_names = verification.assignees(session)
    details = [
        (DETAIL_NAMES.get(key, key), _detail(value))
        for key, value in item.details.items()
        if value is not None
    ]
    return {
        **LABELS,
        "item": item,
        "row": row,
        "details": details,
        "deadline": deadline(item.received_at, item.due_at, None),
        "history": history(item.messages, keys),
        "peers": peer_names(),
        "assignees": staff_names,
        "errors": {},
        "form": {},
    }


def _detail(value: object) -> object:
    return DETAIL_VALUES.get(value, value) if isinstance(value, str | bool) else value


def _notification_page(
    request: Request, user: ConsoleUser, item_id: int, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    context = _notification_context(item_id)
    context.update(extra)
    return render(request, "cases/notification.html", context, user=user, status_code=status_code)


def _notification_conflict(item_id: int, action: str) -> str:
    with read_session() as session:
        row = session.get(Notification, item_id)
    if row is not None and row.status == NotificationStatus.acknowledged:
        if action == "ack":
            return "该通报已确认接收，不能重复确认。"
        return "该通报已确认接收，不能再指派。"
    return "该通报的状态已变化，请查看最新状态后再操作。"


@router.get("/notifications/{item_id:int}")
def notification_page(request: Request, item_id: int, user: Reader, done: str = "") -> HTMLResponse:
    check_id(item_id)
    response = _notification_page(request, user, item_id, notice=DONE.get(done))
    audit("notification_read", user.staff.username, source(request), notification=item_id)
    return response


@router.post("/notifications/{item_id:int}/reveal")
def reveal_notification(request: Request, item_id: int, user: Actor, reason: Field_ = "") -> HTMLResponse:
    check_id(item_id)
    error = reason_error(reason)
    if error:
        return _notification_page(
            request, user, item_id, 422, errors={"reason": error}, form={"reason": reason}
        )
    context = _notification_context(item_id)
    with read_session() as session:
        number = notifications.subject_id_number(session, item_id)
    shown = revealed(
        user.staff, "notification.reveal_id", f"notification:{item_id}", RevealReason(reason), number
    )
    audit("id_revealed", user.staff.username, source(request), notification=item_id, reason=reason)
    context["revealed_id"] = shown.id_number
    return render(request, "cases/notification.html", context, user=user)


@router.post("/notifications/{item_id:int}/ack")
def acknowledge_notification(request: Request, item_id: int, user: Actor, signer: SignerDep) -> Response:
    check_id(item_id)
    try:
        with transaction() as tx:
            notifications.acknowledge(tx, signer, item_id)
    except InvalidState:
        return _notification_page(request, user, item_id, 409, error=_notification_conflict(item_id, "ack"))
    audit("notification_acknowledged", user.staff.username, source(request), notification=item_id)
    return see_other(f"{PREFIX}/notifications/{item_id}?done=confirm")


@router.post("/notifications/{item_id:int}/assign")
def assign_notification(
    request: Request, item_id: int, user: Actor, assignee: Field_ = "", back: Field_ = ""
) -> Response:
    check_id(item_id)
    wanted = assign_target(user, assignee)
    try:
        with transaction() as tx:
            notifications.assign_notification(tx, item_id, wanted)
    except Conflict:
        return _notification_page(
            request, user, item_id, 409, error=_notification_conflict(item_id, "assign")
        )
    except ValidationFailed:
        return _notification_page(request, user, item_id, 422, error="所选人员不是在岗的经办人或负责人。")
    audit(
        "notification_assigned", user.staff.username, source(request), notification=item_id, assignee=wanted
    )
    return see_other(safe_back(back, f"{PREFIX}/notifications/{item_id}?done=assign"))
