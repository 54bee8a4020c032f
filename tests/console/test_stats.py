"""统计 and 预警 in a real Chromium: charts as inline SVG with their tables, the monthly report and
its downloads, the print view, notices marked read, bad months, and the warnings' explanations."""

from __future__ import annotations

import csv
import io
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from playwright.sync_api import ConsoleMessage, Page, expect

from service.clock import utcnow
from service.db import make_engine, transaction
from service.localnet import LocalNode, wait_for
from service.models import (
    CaseStatus,
    Direction,
    ItemType,
    NoticeKind,
    Priority,
    Role,
    Sex,
    StaffNotice,
    Topic,
    VerificationCase,
)
from service.sla.deadlines import SHANGHAI
from service.sla.report import HEADERS, previous_month
from tests.console.conftest import sign_in

SHOTS = os.environ.get("YIPANQI_TEST_SCREENSHOTS")  # a folder: save screenshots there to look at
SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}


def last_month() -> str:
    return f"{previous_month(utcnow().astimezone(SHANGHAI).date()):%Y-%m}"


def watch_csp(page: Page) -> list[str]:
    """Console messages that report a refused inline style or script (the CSP)."""
    refused: list[str] = []

    def listen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", listen)
    return refused


def send_case(asker: LocalNode, answerer: LocalNode, **extra: Any) -> dict[str, Any]:
    body = {
        "recipient": answerer.node_id,
        "subject": SUBJECT,
        "topic": "marital_status",
        "question": "请核实该对象婚育情况。",
        **extra,
    }
    answer = asker.api("POST", "/api/v1/verification-requests", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def arrived(node: LocalNode, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        params = {"direction": "incoming", "page_size": 200}
        items = node.api("GET", "/api/v1/verification-requests", params=params).json()["items"]
        return next((c for c in items if c["request_id"] == request_id), None)

    found: dict[str, Any] = wait_for(find)
    return found


@pytest.mark.parametrize("role", list(Role))
def test_the_stats_page_renders_its_charts_and_numbers_for_every_role(
    page: Page, host: LocalNode, role: Role
) -> None:
    refused = watch_csp(page)
    sign_in(page, host, role)
    answer = page.goto(f"{host.url}/console/stats")
    assert answer is not None
    assert answer.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("统计")
    expect(page.get_by_role("link", name="统计", exact=True)).to_have_attribute("aria-current", "page")
    charts = page.locator("svg.chart")
    assert charts.count() >= 2  # this month's rates and the trend at least
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.get_attribute("role") == "img"
        assert chart.locator("title").text_content()
    # Each chart has its table; the headline one names every rate with numerator and denominator.
    headline = page.locator("figure.chart-figure").first.locator("table")
    expect(headline.locator("thead")).to_contain_text("分子")
    expect(headline).to_contain_text("协查信息反馈率（应答方）")
    expect(headline).to_contain_text("婚育证明查验率")
    expect(page.locator("figure.chart-figure").nth(1)).to_contain_text("近 12 个月")
    assert page.locator("figure.chart-figure").nth(1).locator("tbody tr").count() == 13
    html = page.content()
    assert " style=" not in html
    assert "<script>" not in html
    assert refused == []
    expect(page.get_by_role("heading", name=re.compile("预警准确度"))).to_be_visible()
    if SHOTS and role == Role.operator:
        page.screenshot(path=f"{SHOTS}/stats.png", full_page=True)
    # Another metric through the form (a real select and button).
    page.get_by_label("指标", exact=True).select_option(label="信息发送接收率（发起方）")
    page.get_by_role("button", name="查看").click()
    expect(page.get_by_role("heading", level=2, name=re.compile("信息发送接收率（发起方）"))).to_be_visible()


def test_the_monthly_report_matches_the_staff_api_and_downloads_as_xlsx_and_csv(
    page: Page, host: LocalNode, tmp_path: Path
) -> None:
    month = last_month()
    sign_in(page, host, Role.auditor)
    page.goto(f"{host.url}/console/stats")
    page.get_by_role("link", name=f"{month} 月报").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{month} 流动人口信息交换月报")
    api = host.api("GET", f"/api/v1/reports/{month}").json()
    total = next(
        r
        for r in api["rows"]
        if (r["metric"], r["direction"], r["dimension"]) == ("feedback_rate", "incoming", "all")
    )
    row = page.locator("figure.chart-figure").first.locator("tbody tr", has_text="协查信息反馈率（应答方）")
    cells = row.first.locator("td")
    expect(cells.nth(0)).to_have_text(str(total["numerator"]))
    expect(cells.nth(1)).to_have_text(str(total["denominator"]))

    with page.expect_download() as xlsx_info:
        page.get_by_role("link", name="下载 Excel（XLSX）").click()
    xlsx = xlsx_info.value
    assert xlsx.suggested_filename == f"yipanqi-{month}.xlsx"
    xlsx.save_as(tmp_path / "report.xlsx")
    sheet = load_workbook(tmp_path / "report.xlsx").active
    assert sheet is not None
    assert [c.value for c in sheet[2]] == HEADERS
    assert sheet.max_row == 2 + len(api["rows"])

    with page.expect_download() as csv_info:
        page.get_by_role("link", name="下载 CSV").click()
    body = Path(csv_info.value.path()).read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, for Excel
    lines = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert lines[0][0] == f"{month} 流动人口信息交换月报"
    assert lines[1] == HEADERS


def test_the_print_view_has_the_charts_and_tables_and_no_menu(page: Page, host: LocalNode) -> None:
    month = last_month()
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/stats/{month}")
    page.get_by_role("link", name="打印版").click()
    expect(page).to_have_url(f"{host.url}/console/stats/{month}/print")
    assert page.locator("nav").count() == 0
    assert page.locator("svg.chart").count() >= 1
    assert page.locator("table.chart-table").count() >= 1
    page.emulate_media(media="print")
    expect(page.get_by_role("link", name="← 返回月报")).to_be_hidden()
    expect(page.locator("svg.chart").first).to_be_visible()
    # The ordinary report page prints without its menu too.
    page.goto(f"{host.url}/console/stats/{month}")
    expect(page.locator("header.top")).to_be_hidden()
    expect(page.get_by_role("link", name="下载 CSV")).to_be_hidden()


@pytest.mark.parametrize(
    ("path", "title"),
    [
        ("2026-13", "月份有误"),
        ("1999-12", "月份有误"),
        ("abc", "月份有误"),
        ("2026-1.xlsx", "月份有误"),
        ("20261.csv", "月份有误"),
        ("2026-02x/print", "月份有误"),
    ],
)
def test_a_bad_month_is_a_chinese_error_page(page: Page, host: LocalNode, path: str, title: str) -> None:
    sign_in(page, host, Role.operator)
    answer = page.goto(f"{host.url}/console/stats/{path}")
    assert answer is not None
    assert answer.status == 422
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    expect(page.get_by_role("alert")).to_contain_text("YYYY-MM")


def test_the_current_month_and_an_unknown_metric_are_refused_in_chinese(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.operator)
    current = f"{utcnow().astimezone(SHANGHAI):%Y-%m}"
    answer = page.goto(f"{host.url}/console/stats/{current}.csv")
    assert answer is not None
    assert answer.status == 422
    expect(page.get_by_role("heading", level=1)).to_have_text("该月尚无月报")
    answer = page.goto(f"{host.url}/console/stats?metric=nonsense")
    assert answer is not None
    assert answer.status == 422
    expect(page.get_by_role("heading", level=1)).to_have_text("没有这个指标")


def _notice_for_new_case(host: LocalNode, origin: LocalNode) -> tuple[int, int]:
    """An incoming 协查 at the origin and a reminder notice about it (as the SLA sweep makes them)."""
    sent = send_case(host, origin)
    case = arrived(origin, sent["request_id"])
    engine = make_engine(origin.database_url)
    try:
        with transaction(engine) as tx:
            notice = StaffNotice(
                kind=NoticeKind.reminder,
                item_type=ItemType.verification,
                item_id=case["id"],
                role=Role.operator,
                due_at=utcnow() + timedelta(days=2),
                created_at=utcnow() + timedelta(minutes=5),  # the newest: on the first page
            )
            tx.add(notice)
            tx.flush()
            notice_id = notice.id
    finally:
        engine.dispose()
    assert notice_id is not None
    return notice_id, case["id"]


def test_notices_are_marked_read_by_an_operator_and_not_by_an_auditor(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    notice_id, case_id = _notice_for_new_case(host, origin)
    # The auditor sees it, without a button; the POST itself is refused.
    sign_in(page, origin, Role.auditor)
    page.goto(f"{origin.url}/console/stats")
    row = page.locator("#notices tr", has=page.locator(f'a[href="/console/cases/{case_id}"]'))
    expect(row).to_contain_text("到期提醒")
    expect(row).to_contain_text("未读")
    expect(row.get_by_role("button")).to_have_count(0)
    token = page.locator('input[name="csrftoken"]').first.get_attribute("value")
    refused = page.request.post(
        f"{origin.url}/console/stats/notices/{notice_id}/read", form={"csrftoken": token or ""}
    )
    assert refused.status == 403
    assert "无权访问" in refused.text()
    page.context.clear_cookies()

    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/stats")
    row = page.locator("#notices tr", has=page.locator(f'a[href="/console/cases/{case_id}"]'))
    row.get_by_role("button", name="标为已读").click()
    expect(page).to_have_url(f"{origin.url}/console/stats#notices")
    expect(page.locator(f'#notices a[href="/console/cases/{case_id}"]')).to_have_count(0)  # unread only
    page.get_by_role("link", name="显示已读").click()
    row = page.locator("#notices tr", has=page.locator(f'a[href="/console/cases/{case_id}"]'))
    expect(row).to_contain_text("已读（operator-411627")


def _history(origin: LocalNode, peer: str, count: int, took_days: float) -> None:
    """Past incoming 婚育证明不一致 协查 at the origin, each answered ``took_days`` after receipt."""
    now = utcnow()
    engine = make_engine(origin.database_url)
    try:
        with transaction(engine) as tx:
            for i in range(count):
                received = now - timedelta(days=30 + 9 * i)
                answered = received + timedelta(days=took_days)
                tx.add(
                    VerificationCase(
                        request_message_id=str(uuid.uuid4()),
                        direction=Direction.incoming,
                        peer=peer,
                        status=CaseStatus.answered,
                        subject_id_number=SUBJECT["id_number"],
                        subject_name=SUBJECT["name"],
                        subject_sex=Sex.F,
                        subject_birth_date=received.date().replace(year=1995),
                        topic=Topic.certificate_discrepancy,
                        priority=Priority.normal,
                        key_target=False,
                        question="历史",
                        sent_at=received,
                        received_at=received,
                        due_at=received + timedelta(days=7),
                        acknowledged_at=received,
                        answered_at=answered,
                        reply_received_at=answered,
                    )
                )
    finally:
        engine.dispose()


def test_the_warnings_page_explains_why_an_unacknowledged_case_is_flagged(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    # 太康县 used to answer discrepancy 协查 (7 days) in 10 days; a new one arrives, not yet 签收.
    _history(origin, host.node_id, 12, 10)
    sent = send_case(host, origin, topic="certificate_discrepancy")
    case = arrived(origin, sent["request_id"])
    refused = watch_csp(page)
    sign_in(page, origin, Role.supervisor)
    page.get_by_role("navigation", name="主菜单").get_by_role("link", name="预警").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("预警")
    row = page.locator("table.warnings tr", has=page.locator(f'a[href="/console/cases/{case["id"]}"]'))
    expect(row).to_contain_text("婚育证明不一致协查")
    expect(row).to_contain_text("待签收")
    reason = row.locator("td.reason")
    expect(reason).to_have_text(
        re.compile(
            r"^本节点过去 180 天内 \d+ 件婚育证明不一致协查中 \d+ 件（\d+%）在收到后 [\d.]+ 天内反馈；"
            # Other tests' items waiting at the shared origin node may add the queue's reason.
            r"(本节点还有 \d+ 件更早到期的待办协查，[^；]+；)?"
            r"此件剩 [\d.]+ 天且尚未签收。$"
        )
    )
    expect(row.locator("td.num")).to_have_text(re.compile(r"^\d+%$"))
    expect(page.get_by_role("heading", name=re.compile("预警准确度"))).to_be_visible()
    expect(page.locator("table.quality")).to_contain_text("查准率")
    assert refused == []
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/warnings.png", full_page=True)
    # The asking side lists its own items waiting for peers in a section of their own.
    page.context.clear_cookies()
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/warnings")
    expect(page.get_by_role("heading", level=2, name=re.compile("^待对方办理"))).to_be_visible()
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/warnings-host.png", full_page=True)
