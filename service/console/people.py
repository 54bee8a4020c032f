"""人员与证明: the register's search, a person's page, 婚育证明查验 and the register upload.

Thin pages over the staff API's service functions (``service.people``, ``service.certificates``).
An ID number or a name is only ever sent in a POST body, never in a URL; lists show it masked, and
the full number is shown on request with a reason (logged without the number).

The upload's report is kept in this process's memory for ``REPORT_MINUTES`` (per account, at most
``REPORT_LIMIT`` reports): with several replicas, the result page and its CSV must be opened on the
replica that took the upload (sticky sessions), or the report is gone (404).
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service import idnumbers, names
from service.certificates import disclosures, lookups
from service.certificates import service as certificates
from service.certificates.schemas import LookupCreate
from service.clock import utcnow
from service.config import Settings
from service.console.auth import (
    PREFIX,
    READERS,
    Actor,
    ConsoleUser,
    Reader,
    audit,
    can_act,
    see_other,
    source,
)
from service.console.templating import add_nav, local_time, render
from service.db import SessionDep, read_session, transaction
from service.directory.service import peer_names as directory_peer_names
from service.errors import DomainError, InvalidState, NotFound, ValidationFailed
from service.exchange.client import PeerRateLimited, PeerRefused, PeerUnavailable
from service.models import (
    CertificateCheck,
    Direction,
    LookupPurpose,
    LookupStanding,
    NotificationStatus,
    Sex,
)
from service.people import importer
from service.people import service as people
from service.people.schemas import ImportReport
from service.signing.node import NodeSigner
from service.staff.idempotency import after_commit
from service.staff.reveal import REVEAL_REASONS, RevealReason, revealed
from service.staff.service import audit as staff_audit
from service.subjects import plain_text

router = APIRouter(prefix=PREFIX, include_in_schema=False)
add_nav(30, "人员与证明", f"{PREFIX}/people", "流动人口个案查询、婚育证明查验、名单导入", READERS)

PAGE_SIZE = 50
REPORT_MINUTES = 60
REPORT_LIMIT = 200
FORM_OVERHEAD = 64 * 1024  # the multipart envelope around the file: boundaries, CSRF field, checkbox
FormText = Annotated[str, Form(max_length=200)]

SEX = {Sex.M: "男", Sex.F: "女"}
MARITAL = names.MARITAL
CONTRACEPTION = names.CONTRACEPTION
PURPOSES = names.PURPOSES
CERTIFICATE_STATUS = names.CERTIFICATE_STATUSES
KINDS = names.KINDS
NOTIFICATION_STATUS = {
    NotificationStatus.queued: "待送达", NotificationStatus.delivered: "已送达，待确认",
    NotificationStatus.received: "已收到，待确认", NotificationStatus.acknowledged: "已确认",
}  # fmt: skip
DIRECTIONS = {Direction.outgoing: "发出", Direction.incoming: "收到"}
DISCREPANCY_FIELDS = {**lookups.LABELS}
STANDINGS = {  # why the origin answered a look-up (docs/protocol.md, "Standing")
    LookupStanding.host: "登记的现居住地",
    LookupStanding.arrival: "已发流入通报",
    LookupStanding.case: "协查办理中",
    LookupStanding.none: "无查验资格",
}
VALUE_LABELS: dict[str, str] = {str(k): v for k, v in (*MARITAL.items(), *CONTRACEPTION.items())}


def _signer(request: Request) -> NodeSigner:
    signer: NodeSigner = request.app.state.signer
    return signer


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def iso_time(value: str | None) -> str:
    """A time as the origin's certificate gives it (ISO 8601) in Beijing time."""
    if not value:
        return "—"
    try:
        return local_time(datetime.fromisoformat(value))
    except ValueError:
        return value


def _labels() -> dict[str, Any]:
    return {
        "iso_time": iso_time,
        "SEX": SEX,
        "MARITAL": MARITAL,
        "CONTRACEPTION": CONTRACEPTION,
        "PURPOSES": PURPOSES,
        "CERTIFICATE_STATUS": CERTIFICATE_STATUS,
        "KINDS": KINDS,
        "NOTIFICATION_STATUS": NOTIFICATION_STATUS,
        "DIRECTIONS": DIRECTIONS,
        "DISCREPANCY_FIELDS": DISCREPANCY_FIELDS,
        "VALUE_LABELS": VALUE_LABELS,
        "FIELD_LABELS": FIELD_LABELS,
    }


# --- search ------------------------------------------------------------------------------------


def _index(
    request: Request,
    user: ConsoleUser,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    ctx: dict[str, Any] = {"can_act": can_act(user), "query": {}, "lookup": {}, **_labels(), **context}
    return render(request, "people/index.html", ctx, user=user, status_code=status_code)


@router.get("/people")
def index(request: Request, user: Reader) -> HTMLResponse:
    return _index(request, user)


def _id_number(value: str) -> str | None:
    try:
        return idnumbers.validate(value)
    except ValueError:
        return None


def _name(value: str) -> str | None:
    text = value.strip()
    if not text or len(text) > 64:
        return None
    try:
        return plain_text(text)
    except ValueError:
        return None


@router.post("/people/search")
def search(
    request: Request,
    session: SessionDep,
    user: Reader,
    by: FormText = "id_number",
    id_number: FormText = "",
    name: FormText = "",
    page: Annotated[int, Form(ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    """By full ID number (exact) or by name (exact), both in the POST body: never in a URL."""
    filters: dict[str, str] = {}
    if by == "name":
        value = _name(name)
        if value is None:
            error = "请输入要查询的姓名（1–64 个字）。"
            return _index(request, user, status_code=422, search_error=error, query={"by": "name"})
        filters["name"] = value
    else:
        number = _id_number(id_number)
        if number is None:
            error = "身份证号应为 18 位（17 位数字加 1 位数字或 X），且校验位正确。"
            return _index(request, user, status_code=422, search_error=error, query={"by": "id_number"})
        filters["id_number"] = number
    items, total = people.search(
        session, id_number=filters.get("id_number"), name=filters.get("name"), page=page, page_size=PAGE_SIZE
    )
    staff_audit(user.staff, "people.search", f"filters:{','.join(filters)} results:{total}")
    query = {"by": by, "page": page, **filters}
    pages = max(1, -(-total // PAGE_SIZE))
    return _index(request, user, results=items, total=total, query=query, pages=pages)


# --- a person ----------------------------------------------------------------------------------


def _person_page(
    request: Request,
    user: ConsoleUser,
    person_id: int,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    with read_session() as session:
        person = people.get_person(session, person_id)
        certificate = certificates.certificate_of(session, person_id)
        certificate_read = (
            certificates.read(session, certificate.id) if certificate and certificate.id else None
        )
        checks = lookups.list_checks(session, person_id=person_id, page=1, page_size=50)
        notices = people.notifications_of(session, person_id)
        looked_up, looked_up_total = disclosures.lookups_of(session, person_id)  # origin side
        nodes = directory_peer_names(session) if looked_up else {}
    here = _signer(request).node_id
    ctx = {
        "person": person,
        "certificate": certificate_read,
        "checks": checks,
        "looked_up": looked_up,
        "looked_up_total": looked_up_total,
        "NODES": nodes,
        "STANDINGS": STANDINGS,
        "notifications": notices,
        "here": here,
        "can_act": can_act(user),
        "can_look_up": can_act(user) and person.origin_node != here and person.merged_into is None,
        **_labels(),
        **context,
    }
    return render(request, "people/person.html", ctx, user=user, status_code=status_code)


@router.get("/people/{person_id:int}")
def person_page(request: Request, person_id: int, user: Reader) -> HTMLResponse:
    response = _person_page(request, user, person_id)
    staff_audit(user.staff, "people.read", f"person:{person_id}")
    return response


@router.post("/people/{person_id:int}/reveal")
def reveal(request: Request, person_id: int, user: Actor, reason: FormText = "") -> HTMLResponse:
    """The full ID number, in this answer only, for a reason from the list (logged, never the number)."""
    if reason not in REVEAL_REASONS:
        error = "请选择查看完整身份证号的事由。"
        return _person_page(request, user, person_id, status_code=422, reveal_error=error)
    with read_session() as session:
        number = people.id_number_of(session, person_id)
    # The staff API's reveal (service.staff.reveal): the same audit, plus the console's own line.
    shown = revealed(user.staff, "people.reveal_id", f"person:{person_id}", RevealReason(reason), number)
    audit("id_revealed", user.staff.username, source(request), person=person_id, reason=reason)
    return _person_page(request, user, person_id, revealed_id=shown.id_number)


# --- 婚育证明查验 -------------------------------------------------------------------------------


def _lookup_error(exc: DomainError) -> str:
    if isinstance(exc, PeerRefused) and exc.peer_code == "no_standing":
        return (
            "户籍地拒绝查验：本县对此人没有查验资格。户籍地只答复登记为其现居住地的县、已向其发出流入通报的县，"
            "或与其有在办协查的县（仅居住地查验）。请先在本县登记此人并发出流入通报，户籍地收到后再查验。"
        )
    if isinstance(exc, PeerRateLimited):
        return "本县向该户籍地的查验过于频繁，户籍地暂不受理，请稍后再试。"
    if isinstance(exc, PeerRefused):
        return "户籍地拒绝了本次查验（可能尚未信任本县的密钥），本次查验未记录，请联系管理员核对双方通讯录。"
    if isinstance(exc, PeerUnavailable):
        return "户籍地节点未能给出有效的签名答复（可能暂时无法连接），本次查验未记录，请稍后再试。"
    detail = exc.detail
    if "is this node" in detail:
        return "该人员的户籍地就是本县：婚育证明在本县登记，请在人员页面直接查看，无需查验。"
    origin = re.search(r"the origin (\d{6})", detail)
    if origin:
        return f"户籍地 {origin.group(1)} 不在本节点的通讯录中，无法查验，请联系管理员添加该县节点。"
    return "查验未能进行：请检查身份证号和姓名后重试。"


def _run_lookup(request: Request, user: ConsoleUser, data: LookupCreate) -> int:
    """The staff API's look-up: reads, asks the origin with no transaction open, stores the check."""
    with read_session() as session:
        result = lookups.lookup(session, _settings(request), _signer(request), data, user.staff.username)
    staff_audit(user.staff, "certificate.lookup", f"check:{result.check_id}")
    return result.check_id


def _purpose(value: str) -> LookupPurpose | None:
    try:
        return LookupPurpose(value)
    except ValueError:
        return None


@router.post("/people/{person_id:int}/lookup")
def lookup_person(request: Request, person_id: int, user: Actor, purpose: FormText = "") -> Response:
    chosen = _purpose(purpose)
    if chosen is None:
        return _person_page(request, user, person_id, status_code=422, lookup_error="请选择查验用途。")
    with read_session() as session:
        person = people.get_person(session, person_id)
        number = people.id_number_of(session, person_id)
    data = LookupCreate(id_number=number, name=person.name, purpose=chosen)
    try:
        check_id = _run_lookup(request, user, data)
    except (ValidationFailed, PeerUnavailable, PeerRefused, PeerRateLimited) as exc:
        status = exc.status_code
        return _person_page(request, user, person_id, status_code=status, lookup_error=_lookup_error(exc))
    return see_other(f"{PREFIX}/people/checks/{check_id}")


@router.post("/people/lookup")
def lookup_by_number(
    request: Request, user: Actor, id_number: FormText = "", name: FormText = "", purpose: FormText = ""
) -> Response:
    """查验 by ID number and name, for someone who may not be in the register yet (POST only)."""
    errors = []
    number, given_name, chosen = _id_number(id_number), _name(name), _purpose(purpose)
    if number is None:
        errors.append("身份证号应为 18 位（17 位数字加 1 位数字或 X），且校验位正确。")
    if given_name is None:
        errors.append("请输入姓名（1–64 个字）。")
    if chosen is None:
        errors.append("请选择查验用途。")
    kept = {"purpose": purpose}  # the number and the name are not echoed back into the page
    if errors or number is None or given_name is None or chosen is None:
        return _index(request, user, status_code=422, lookup_errors=errors, lookup=kept)
    try:
        check_id = _run_lookup(request, user, LookupCreate(id_number=number, name=given_name, purpose=chosen))
    except (ValidationFailed, PeerUnavailable, PeerRefused, PeerRateLimited) as exc:
        status = exc.status_code
        return _index(request, user, status_code=status, lookup_errors=[_lookup_error(exc)], lookup=kept)
    return see_other(f"{PREFIX}/people/checks/{check_id}")


def _check_page(
    request: Request, user: ConsoleUser, check_id: int, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    with read_session() as session:
        result = lookups.check_result(session, check_id)
        summary = lookups.summary(_check_row(session, check_id))
    ctx = {"result": result, "check": summary, "can_act": can_act(user), **_labels(), **context}
    return render(request, "people/check.html", ctx, user=user, status_code=status_code)


def _check_row(session: Session, check_id: int) -> CertificateCheck:
    row = session.get(CertificateCheck, check_id)
    if row is None:
        raise NotFound(f"no certificate check {check_id}")
    return row


@router.get("/people/checks/{check_id:int}")
def check_page(request: Request, check_id: int, user: Reader) -> HTMLResponse:
    notice = "协查请求已发出，户籍地答复后可在个案中查看。" if request.query_params.get("sent") else None
    return _check_page(request, user, check_id, notice=notice)


@router.post("/people/checks/{check_id:int}/discrepancy")
def send_discrepancy(request: Request, check_id: int, user: Actor) -> Response:
    """The certificate_discrepancy 协查 (once: a second click finds it sent and says so)."""
    signer = _signer(request)
    try:
        with transaction() as tx:
            lookups.send_discrepancy(tx, signer, check_id, user.staff.username)
    except InvalidState:
        error = "此次查验的协查请求已经发出过（或答复与本地登记一致，无需协查），未重复发送。"
        return _check_page(request, user, check_id, status_code=409, discrepancy_error=error)
    after_commit(staff_audit, user.staff, "certificate.discrepancy_request", f"check:{check_id}")
    return see_other(f"{PREFIX}/people/checks/{check_id}?sent=1")


# --- register upload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kept:
    staff_id: int
    expires: datetime
    report: ImportReport


class ReportStore:
    """Import reports in memory for a limited time (per process; see the module's docstring)."""

    def __init__(self, minutes: int = REPORT_MINUTES, limit: int = REPORT_LIMIT) -> None:
        self.ttl = timedelta(minutes=minutes)
        self.limit = limit
        self._lock = threading.Lock()
        self._reports: OrderedDict[str, _Kept] = OrderedDict()

    def put(self, staff_id: int, report: ImportReport) -> str:
        key = secrets.token_urlsafe(16)
        now = utcnow()
        with self._lock:
            self._drop_expired(now)
            self._reports[key] = _Kept(staff_id, now + self.ttl, report)
            while len(self._reports) > self.limit:
                self._reports.popitem(last=False)
        return key

    def get(self, key: str, staff_id: int) -> ImportReport:
        with self._lock:
            self._drop_expired(utcnow())
            kept = self._reports.get(key)
        if kept is None or kept.staff_id != staff_id:  # another account's report is not found either
            raise NotFound("no such import report (reports are kept for a limited time)")
        return kept.report

    def _drop_expired(self, now: datetime) -> None:
        for key in [k for k, v in self._reports.items() if v.expires <= now]:
            del self._reports[key]


REPORTS = ReportStore()
REPORT_ID = r"{report_id:str}"
_REPORT_KEY = re.compile(r"^[A-Za-z0-9_-]{10,40}$")

# Column names as the township's forms have them (the importer's headers, the other way round).
FIELD_LABELS = {field: header for header, field in importer.HEADERS.items()} | {"row": "整行"}
_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), t)
    for p, t in (
        (r"^duplicate_person: the same ID number is on line (\d+)$", "与第 {0} 行的身份证号重复"),
        (r"^duplicate_person: registered already as person (\d+)$", "该身份证号已登记（人员编号 {0}）"),
        (r"^Field required$", "必填项，未填写"),
        (r"^Value error, must be 18 characters", "应为 18 位：17 位数字加 1 位数字或 X"),
        (r"^Value error, check digit", "身份证号校验位不正确"),
        (r"^Value error, digits 7-14 are not a valid birth date", "身份证号第 7–14 位不是有效的出生日期"),
        (r"^Value error, contains control characters", "含有不可见的控制字符"),
        (r"^String should have at least (\d+) characters?", "长度不足 {0} 位"),
        (r"^String should have at most (\d+) characters?", "超过 {0} 个字符"),
        (r"^String should match pattern", "格式不正确（应为 6 位行政区划代码）"),
        (r"^Input should be 'M' or 'F'", "应填“男”或“女”"),
        (r"^Input should be ", "不是可选的值之一"),
        (r"^not a date", "不是日期（应为 YYYY-MM-DD、YYYY/MM/DD 或 YYYYMMDD）"),
        (r"^not a valid calendar date", "不是有效的日期"),
        (r"^disagrees with the ID number \(digits 7-14\)", "与身份证号中的出生日期（第 7–14 位）不一致"),
        (r"^disagrees with the ID number \(17th digit\)", "与身份证号中的性别（第 17 位）不一致"),
        (r"^is in the future", "晚于今天"),
        (r"^is before the birth date", "早于出生日期"),
        (r"^is before arrived_on", "早于流入日期"),
        (r"^only for women of childbearing age \((\d+)-(\d+)\)", "仅育龄妇女（{0}–{1} 岁）填写"),
        (r"^needs a marital_status other than unmarried", "需同时填写婚姻状况（未婚者无结婚日期）"),
        (r"^needs a contraception_method", "需同时填写避孕措施"),
        (r"^has more cells than the header's (\d+)", "单元格多于表头的 {0} 列"),
    )
]


def reason_text(reason: str) -> str:
    """A row error's reason in Chinese (the importer's reasons never carry the cell's value)."""
    for pattern, text in _REASONS:
        match = pattern.search(reason)
        if match:
            return text.format(*match.groups())
    return reason


def field_text(field: str) -> str:
    head = field.split(".", 1)[0]
    return FIELD_LABELS.get(field) or FIELD_LABELS.get(head) or field


def error_rows(report: ImportReport) -> list[tuple[int, str, str]]:
    """(line, column, reason) for every bad row: what the page and the CSV show."""
    return [
        (bad.line, field_text(e.field), reason_text(e.reason)) for bad in report.bad_rows for e in bad.errors
    ]


def file_refused_text(exc: DomainError) -> list[str]:
    """Why the file as a whole was refused, in Chinese (the column named when it is a column)."""
    reasons = {
        "unknown column": "不是可识别的列名",
        "repeated": "重复出现",
        "required column missing": "缺少必填列",
    }
    errors = exc.extra.get("errors") or []
    if errors:
        return [f"{_column_text(e['field'])}{reasons.get(e['reason'], e['reason'])}" for e in errors]
    detail = exc.detail
    if "looks like data" in detail:
        return ["第一行必须是表头（列名），当前第一行像是数据。"]
    if "empty" in detail:
        return ["文件是空的：第一行应为表头（列名）。"]
    if "XLSX" in detail and "workbook" in detail:
        return ["不是可读取的 XLSX 工作簿，请用 Excel 另存为 .xlsx 或 CSV 后重试。"]
    return ["无法读取文件：请使用 UTF-8 或 GBK 编码的 CSV 文件，或 XLSX 文件。"]


def _column_text(field: str) -> str:
    """An unknown column is named by its place ("column 2": never what its cell says)."""
    place = re.fullmatch(r"column (\d+)", field)
    return f"第 {place.group(1)} 列" if place else f"列“{field_text(field)}”"


def _megabytes(size: int) -> str:
    """Rounded down, as upload.js says it too."""
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{max(1, size // 1024)} KB"


def _import_form(
    request: Request, user: ConsoleUser, *, status_code: int = 200, errors: list[str] | None = None
) -> HTMLResponse:
    limit = _settings(request).people_import_max_bytes
    ctx = {
        "max_bytes": limit,
        "max_size": _megabytes(limit),
        "errors": errors or [],
        "headers": importer.HEADERS,
    }
    return render(request, "people/import.html", ctx, user=user, status_code=status_code)


def too_large_message(limit: int) -> str:
    """Also the page service/limits.py answers with, for an upload refused before it is read."""
    return f"文件超过允许的大小（最大 {_megabytes(limit)}），未导入。请把名单拆成几个较小的文件分批导入。"


def _too_large(request: Request, user: ConsoleUser) -> HTMLResponse:
    error = too_large_message(_settings(request).people_import_max_bytes)
    return _import_form(request, user, status_code=413, errors=[error])


@router.get("/people/import")
def import_page(request: Request, user: Actor) -> HTMLResponse:
    return _import_form(request, user)


def _import(
    signer: NodeSigner, settings: Settings, content: bytes, staff: str, dry_run: bool
) -> ImportReport:
    """Parse (outside any transaction), then store chunk by chunk: the staff API's importer."""
    table = importer.read_table(content, importer.ImportLimits.of(settings))
    return importer.import_people(
        signer, table, staff, dry_run=dry_run, batch_size=settings.people_import_batch_size
    )


@router.post("/people/import")
async def import_upload(request: Request, user: Actor) -> Response:
    settings = _settings(request)
    limit = settings.people_import_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        async for _chunk in request.stream():  # read and drop: never written to disk
            pass
        return _too_large(request, user)
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        dry_run = form.get("dry_run") == "1"
        if not isinstance(upload, UploadFile) or not upload.filename:
            return _import_form(
                request, user, status_code=422, errors=["请选择要导入的文件（CSV 或 XLSX）。"]
            )
        content = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(content) > limit:
        return _too_large(request, user)
    if not content:
        return _import_form(request, user, status_code=422, errors=["所选文件是空的。"])
    try:
        report = await run_in_threadpool(
            _import, _signer(request), settings, content, user.staff.username, dry_run
        )
    except importer.FileRefused as exc:
        return _import_form(request, user, status_code=422, errors=file_refused_text(exc))
    staff_audit(user.staff, "people.import", f"rows:{report.rows} stored:{report.stored} bad:{report.bad}")
    assert user.staff.id is not None
    key = REPORTS.put(user.staff.id, report)
    return see_other(f"{PREFIX}/people/import/{key}")


def _report(user: ConsoleUser, report_id: str) -> ImportReport:
    if not _REPORT_KEY.fullmatch(report_id):
        raise NotFound("no such import report")
    assert user.staff.id is not None
    return REPORTS.get(report_id, user.staff.id)


@router.get("/people/import/" + REPORT_ID)
def import_result(request: Request, report_id: str, user: Actor) -> HTMLResponse:
    report = _report(user, report_id)
    ctx = {
        "report": report,
        "report_id": report_id,
        "errors": error_rows(report),
        "kept_minutes": REPORT_MINUTES,
    }
    return render(request, "people/import_result.html", ctx, user=user)


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would run as a formula starts with a quote instead (CSV injection)."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


@router.get("/people/import/" + REPORT_ID + "/errors.csv")
def import_errors_csv(report_id: str, user: Actor) -> Response:
    report = _report(user, report_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["行号", "列", "原因"])
    for line, column, reason in error_rows(report):
        writer.writerow([str(line), neutralise(column), neutralise(reason)])
    body = ("\ufeff" + out.getvalue()).encode("utf-8")  # the BOM: Excel opens it as UTF-8
    headers = {
        "Content-Disposition": f'attachment; filename="import-errors-{report_id[:8]}.csv"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
