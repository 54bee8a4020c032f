"""人员与证明 in a real Chromium against real nodes: upload, search, a person's page, 婚育证明查验."""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, expect
from sqlalchemy import func
from sqlmodel import Session, select

from service.clock import utcnow
from service.console.people import ReportStore, neutralise, reason_text
from service.db import make_engine
from service.localnet import LocalNode, build_network, wait_for
from service.models import Role, VerificationCase
from service.people.schemas import ImportReport
from service.signing import pii
from service.sla.deadlines import SHANGHAI
from tests.conftest import FAST, free_ports
from tests.console.conftest import VIEWPORT, sign_in
from tests.people.factories import id_number

HEADER = "身份证号,姓名,性别,出生日期,户籍地代码,现居住地代码\n"
FORBIDDEN = "无权访问"


def new_number(sex: str = "F") -> str:
    """A valid number no other test uses (the nodes are shared by the whole session)."""
    born = date(1986 + secrets.randbelow(14), 1 + secrets.randbelow(12), 1 + secrets.randbelow(28))
    return id_number("411627", born, secrets.randbelow(50), sex)


def born_on(number: str) -> str:
    return f"{number[6:10]}-{number[10:12]}-{number[12:14]}"


def a_name() -> str:
    return "测" + "".join(secrets.choice("秀英丽娟敏静芳霞兰梅") for _ in range(3))


def csrf(page: Page) -> str:
    """The form token of the page (every page has one: the sign-out form)."""
    token = page.locator("input[name=csrftoken]").first.get_attribute("value")
    assert token
    return token


def register(node: LocalNode, number: str, name: str, **fields: Any) -> int:
    body = {
        "id_number": number,
        "name": name,
        "sex": "F",
        "birth_date": born_on(number),
        "host_node": "410105",
    }
    response = node.api("POST", "/api/v1/people", json={**body, **fields})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def cases_about(node: LocalNode, number: str) -> int:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            index = pii.blind_index(number, pii.ID_NUMBER)  # the number is stored encrypted
            query = select(func.count()).where(VerificationCase.subject_id_number_index == index)
            return session.exec(query).one()
    finally:
        engine.dispose()


def bad_check_digit(number: str) -> str:
    return number[:17] + ("1" if number[17] != "1" else "2")


# --- register upload ---------------------------------------------------------------------------


def test_an_upload_shows_counts_the_bad_row_and_its_csv(page: Page, host: LocalNode, tmp_path: Path) -> None:
    good1, good2, bad = new_number(), new_number(), bad_check_digit(new_number())
    rows = [f"{n},{a_name()},女,{born_on(n)},411627,410105\n" for n in (good1, bad, good2)]
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/people")
    page.get_by_role("link", name="导入流动人口名单").click()
    expect(page).to_have_url(f"{host.url}/console/people/import")
    form = page.locator("form[data-upload]")
    names = form.locator("input[name]").evaluate_all("els => els.map(e => e.name)")
    assert names.index("csrftoken") < names.index("file")  # the CSRF field before the file
    page.get_by_label("名单文件").set_input_files(
        {"name": "名单.csv", "mimeType": "text/csv", "buffer": (HEADER + "".join(rows)).encode("utf-8")}
    )
    with page.expect_request(
        lambda r: r.method == "POST" and r.url.endswith("/console/people/import")
    ) as sent:
        page.get_by_role("button", name="上传并导入").click()
    assert sent.value.resource_type == "xhr"  # the progress bar's upload, not a plain form post
    expect(page).to_have_url(re.compile(r"/console/people/import/[\w-]+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("导入结果")
    counts = page.locator("#import-counts")
    expect(counts.locator("[data-count=rows]")).to_have_text("3")
    expect(counts.locator("[data-count=stored]")).to_have_text("2")
    expect(counts.locator("[data-count=bad]")).to_have_text("1")
    error_rows = page.locator("#error-rows tbody tr")
    expect(error_rows).to_have_count(1)
    expect(error_rows.first.locator("td")).to_have_text(["3", "身份证号", "身份证号校验位不正确"])
    assert bad not in page.content()  # the cell's value is never shown

    with page.expect_download() as download:
        page.get_by_role("link", name="下载错误明细（CSV）").click()
    saved = tmp_path / "errors.csv"
    download.value.save_as(saved)
    text = saved.read_bytes().decode("utf-8")
    assert text.startswith("\ufeff")
    assert list(csv.reader(io.StringIO(text.lstrip("\ufeff")))) == [
        ["行号", "列", "原因"],
        ["3", "身份证号", "身份证号校验位不正确"],
    ]
    assert bad not in text

    # Stored: the good rows are found by number.
    found = host.api("POST", "/api/v1/people/search", json={"id_number": good1}).json()
    assert found["total"] == 1


def test_without_javascript_the_plain_form_uploads_and_a_dry_run_stores_nothing(
    browser: Browser, host: LocalNode
) -> None:
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", java_script_enabled=False)
    try:
        page = context.new_page()
        number = new_number()
        sign_in(page, host, Role.supervisor)
        page.goto(f"{host.url}/console/people/import")
        page.get_by_label("名单文件").set_input_files(
            {
                "name": "register.csv",
                "mimeType": "text/csv",
                "buffer": (HEADER + f"{number},{a_name()},女,{born_on(number)},411627,410105\n").encode(
                    "gbk"
                ),
            }
        )
        page.get_by_label("仅校验，不入库").check()
        page.get_by_role("button", name="上传并导入").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("导入结果（试导入，未入库）")
        expect(page.locator("[data-count=stored]")).to_have_text("1")
        expect(page.get_by_role("status")).to_have_text("所有行均通过校验。")
        assert host.api("POST", "/api/v1/people/search", json={"id_number": number}).json()["total"] == 0
    finally:
        context.close()


def test_an_unreadable_file_is_refused_in_chinese(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/people/import")
    page.get_by_label("名单文件").set_input_files(
        {"name": "x.csv", "mimeType": "text/csv", "buffer": "编号,姓名\n1,2\n".encode()}
    )
    page.get_by_role("button", name="上传并导入").click()
    expect(page.locator("#import-errors")).to_contain_text("第 1 列不是可识别的列名")
    expect(page).to_have_url(f"{host.url}/console/people/import")
    # The form came back in place (the script's answer): it uploads again.
    page.get_by_label("名单文件").set_input_files(
        {"name": "y.csv", "mimeType": "text/csv", "buffer": HEADER.encode()}
    )
    page.get_by_role("button", name="上传并导入").click()
    expect(page.locator("[data-count=rows]")).to_have_text("0")


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """A node taking uploads of at most 2,000 bytes."""
    root = tmp_path_factory.mktemp("small-limit")
    env = {**FAST, "YIPANQI_PEOPLE_IMPORT_MAX_BYTES": "2000"}
    (node,) = build_network(root, [("410105", "金水区")], free_ports(1), env, console_logins=True)
    node.start()
    yield node
    node.stop()


def test_a_file_over_the_size_limit_gets_a_clear_message(browser: Browser, small_limit: LocalNode) -> None:
    big = (HEADER + "x" * 3000).encode()
    huge = (HEADER + "x" * 200_000).encode()  # past the limit and the form's overhead: not even parsed
    for javascript in (True, False):
        context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", java_script_enabled=javascript)
        try:
            page = context.new_page()
            sign_in(page, small_limit, Role.operator)
            for content in (big, huge):
                page.goto(f"{small_limit.url}/console/people/import")
                page.get_by_label("名单文件").set_input_files(
                    {"name": "big.csv", "mimeType": "text/csv", "buffer": content}
                )
                page.get_by_role("button", name="上传并导入").click()
                message = "文件超过允许的大小（最大 1 KB）"
                expect(page.get_by_role("alert")).to_contain_text(message)
        finally:
            context.close()
    # The server refuses it by itself (no script to check first).
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = context.new_page()
        sign_in(page, small_limit, Role.operator)
        page.goto(f"{small_limit.url}/console/people/import")
        answer = page.request.post(
            f"{small_limit.url}/console/people/import",
            multipart={
                "csrftoken": csrf(page),
                "file": {"name": "big.csv", "mimeType": "text/csv", "buffer": big},
            },
        )
        assert answer.status == 413
        assert "文件超过允许的大小" in answer.text()
    finally:
        context.close()


def test_the_error_csv_neutralises_formulas_and_reports_expire() -> None:
    assert [neutralise(c) for c in ("=1+1", "+x", "-2", "@SUM(A1)", "行号", "3")] == [
        "'=1+1", "'+x", "'-2", "'@SUM(A1)", "行号", "3",
    ]  # fmt: skip
    assert reason_text("duplicate_person: the same ID number is on line 4") == "与第 4 行的身份证号重复"
    store = ReportStore(minutes=0)
    report = ImportReport(format="csv", encoding="utf-8", dry_run=False, rows=0, stored=0, bad=0,
                          bad_rows=[], possible_duplicates=[], notifications=0)  # fmt: skip
    key = store.put(1, report)
    with pytest.raises(Exception, match="no such import report"):
        store.get(key, 1)
    kept = ReportStore()
    key = kept.put(1, report)
    assert kept.get(key, 1) is report
    with pytest.raises(Exception, match="no such import report"):
        kept.get(key, 2)  # another account's report is not found


# --- search, the person's page, reveal ---------------------------------------------------------


def test_a_search_by_id_number_is_a_post_and_never_in_a_url(page: Page, host: LocalNode) -> None:
    number, name = new_number(), a_name()
    person_id = register(host, number, name)
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r))
    sign_in(page, host, Role.auditor)
    page.get_by_role("navigation", name="主菜单").get_by_role("link", name="人员与证明").click()
    page.get_by_label("身份证号", exact=True).fill(number)
    page.get_by_role("button", name="按身份证号查询").click()
    expect(page.get_by_role("status")).to_have_text("共 1 条。")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(1)
    masked = number[:4] + "*" * 10 + number[-4:]
    expect(rows.first.locator("td").nth(0)).to_have_text(masked)
    expect(rows.first.locator("td").nth(1)).to_have_text(name)
    assert number not in page.url
    search = [r for r in seen if r.url.endswith("/console/people/search")]
    assert [r.method for r in search] == ["POST"]
    assert number in (search[0].post_data or "")  # in the body only
    assert number not in page.content().replace(masked, "")

    rows.first.get_by_role("link", name="查看").click()
    expect(page).to_have_url(f"{host.url}/console/people/{person_id}")
    expect(page.locator("#id-number")).to_have_text(masked)
    assert number not in page.content()
    assert page.get_by_role("button", name="显示完整号码").count() == 0  # not for an auditor

    page.goto(f"{host.url}/console/people")
    page.get_by_label("姓名", exact=True).fill(name)
    page.get_by_role("button", name="按姓名查询").click()
    expect(page.locator("#results tbody tr")).to_have_count(1)
    assert name not in page.url
    assert all(number not in r.url and name not in r.url for r in seen)

    page.goto(f"{host.url}/console/people")
    page.get_by_label("身份证号", exact=True).fill(bad_check_digit(number))
    page.get_by_role("button", name="按身份证号查询").click()
    expect(page.locator("#search-error")).to_contain_text("校验位正确")


def test_revealing_the_number_needs_a_reason_and_an_auditor_may_not(page: Page, host: LocalNode) -> None:
    number = new_number()
    person_id = register(host, number, a_name())
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/people/{person_id}")
    answer = page.request.post(
        f"{host.url}/console/people/{person_id}/reveal", form={"csrftoken": csrf(page)}
    )
    assert answer.status == 422  # no reason: refused
    assert number not in answer.text()
    page.get_by_label("查看完整身份证号的事由").select_option(label="核实本人身份")
    page.get_by_role("button", name="显示完整号码").click()
    expect(page.locator("#id-number strong")).to_have_text(number)
    assert number not in page.url
    # The staff API's reveal audit line too (service/staff/reveal.py), never the number.
    log = host.log_path.read_text(encoding="utf-8") if host.log_path else ""
    assert f"action=people.reveal_id target=person:{person_id} reason:identity" in log
    assert number not in log

    sign_in(page, host, Role.auditor)
    page.goto(f"{host.url}/console/people/{person_id}")
    answer = page.request.post(
        f"{host.url}/console/people/{person_id}/reveal", form={"csrftoken": csrf(page), "reason": "identity"}
    )
    assert answer.status == 403
    assert FORBIDDEN in answer.text()
    assert number not in answer.text()


# --- 婚育证明查验 -------------------------------------------------------------------------------


def test_a_lookup_at_the_origin_shows_the_signed_answer_and_offers_the_query_once(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    number, name = new_number(), a_name()
    married = {"marital_status": "first_marriage", "marriage_date": f"{int(number[6:10]) + 24}-05-01"}
    at_origin = register(origin, number, name, origin_node="411627", **married)  # holds her 婚育证明
    arrived = (utcnow().astimezone(SHANGHAI).date() - timedelta(days=30)).isoformat()
    person_id = register(host, number, name, arrived_on=arrived, marital_status="remarried",
                         marriage_date=married["marriage_date"])  # fmt: skip

    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/people/{person_id}")
    expect(page.locator("#certificate-title ~ p").first).to_contain_text("由户籍地 411627 出具")
    # Her arrival was notified to the origin (流入通报).
    expect(page.locator("#notifications tbody tr").first.locator("td").first).to_have_text("流入")
    page.get_by_label("查验用途").select_option(label="居住地查验")
    page.get_by_role("button", name="向户籍地查验婚育证明").click()
    expect(page).to_have_url(re.compile(r"/console/people/checks/\d+$"))
    check_url = page.url
    expect(page.locator("#found")).to_contain_text("查到电子婚育证明")
    expect(page.locator("#keyid")).to_have_text("411627/k1")
    expect(page.locator("#signature")).to_contain_text("签名有效")
    expect(page.locator("#certificate-fields")).to_contain_text("411627-")  # its number
    expect(page.locator("#certificate-fields")).to_contain_text("初婚")
    expect(page.locator("#discrepancies tbody tr td")).to_have_text(["婚姻状况", "再婚", "初婚"])
    assert number not in page.content()

    page.get_by_role("button", name="发出婚育证明核实协查").click()
    expect(page.locator("#check-notice")).to_contain_text("协查请求已发出")
    case_link = page.locator("#discrepancy-case a")
    expect(case_link).to_have_attribute("href", re.compile(r"^/console/cases/\d+$"))
    assert page.get_by_role("button", name="发出婚育证明核实协查").count() == 0
    # A second press (a double-click, another tab): nothing more is sent, and the page says so.
    again = page.request.post(f"{check_url}/discrepancy", form={"csrftoken": csrf(page)})
    assert again.status == 409
    assert "已经发出过" in again.text()
    assert cases_about(host, number) == 1

    # The person's page lists the check, with the 协查 sent.
    page.goto(f"{host.url}/console/people/{person_id}")
    checks = page.locator("#checks tbody tr")
    expect(checks).to_have_count(1)
    expect(checks.first).to_contain_text("查到")
    expect(checks.first).to_contain_text("已发协查")
    wait_for(lambda: cases_about(origin, number) == 1)  # the origin got the 协查, once

    # Her origin's page says who looked her up, and why it answered.
    sign_in(page, origin, Role.operator)
    page.goto(f"{origin.url}/console/people/{at_origin}")
    looked_up = page.locator("#looked-up tbody tr")
    expect(looked_up).to_have_count(1)
    expect(looked_up.first).to_contain_text("410105")
    expect(looked_up.first).to_contain_text("居住地查验")
    expect(looked_up.first).to_contain_text("登记的现居住地")
    expect(looked_up.first).to_contain_text("已答复（查到）")


def test_a_lookup_by_id_number_in_a_form_for_someone_not_registered_here(
    page: Page, host: LocalNode, origin: LocalNode
) -> None:
    number, name = new_number(), a_name()
    register(origin, number, name, origin_node="411627")  # her origin holds her, with her host
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r))
    sign_in(page, host, Role.supervisor)
    page.goto(f"{host.url}/console/people")
    page.locator("#lookup-id-number").fill(number)
    page.locator("#lookup-name").fill("王" + name)  # not her name: nothing found
    page.get_by_role("button", name="向户籍地查验").click()
    expect(page.locator("#found")).to_contain_text("未查到电子婚育证明")
    expect(page.locator("#keyid")).to_have_text("411627/k1")
    expect(page.get_by_role("button", name="发出婚育证明核实协查")).to_be_visible()
    assert all(number not in r.url for r in seen)

    # Someone this county has no standing for (unknown at her origin, never notified): refused.
    page.goto(f"{host.url}/console/people")
    page.locator("#lookup-id-number").fill(new_number())
    page.locator("#lookup-name").fill(a_name())
    page.get_by_role("button", name="向户籍地查验").click()
    expect(page.locator("#lookup-errors")).to_contain_text("户籍地拒绝查验")

    page.goto(f"{host.url}/console/people")
    page.locator("#lookup-id-number").fill("410105" + number[6:17] + "0")  # this county: nothing to ask
    page.locator("#lookup-name").fill(a_name())
    page.get_by_role("button", name="向户籍地查验").click()
    expect(page.locator("#lookup-errors")).to_be_visible()


def test_an_auditor_may_not_look_up_nor_import(page: Page, host: LocalNode) -> None:
    person_id = register(host, new_number(), a_name())
    sign_in(page, host, Role.auditor)
    page.goto(f"{host.url}/console/people")
    assert page.get_by_role("link", name="导入流动人口名单").count() == 0
    assert page.get_by_role("button", name="向户籍地查验").count() == 0
    token = csrf(page)
    for path, form in (
        (f"/console/people/{person_id}/lookup", {"csrftoken": token, "purpose": "residence_check"}),
        ("/console/people/lookup", {"csrftoken": token, "id_number": new_number(), "name": "王秀英"}),
    ):
        answer = page.request.post(f"{host.url}{path}", form=form)
        assert answer.status == 403, path
        assert FORBIDDEN in answer.text()
    upload = page.request.post(
        f"{host.url}/console/people/import",
        multipart={
            "csrftoken": token,
            "file": {"name": "x.csv", "mimeType": "text/csv", "buffer": HEADER.encode()},
        },
    )
    assert upload.status == 403
    assert FORBIDDEN in upload.text()  # the role's refusal, not the CSRF check's
    assert page.goto(f"{host.url}/console/people/import").status == 403  # type: ignore[union-attr]


def test_an_upload_with_the_file_before_its_token_is_refused(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.operator)
    page.goto(f"{host.url}/console/people/import")
    token = csrf(page)
    file = {"name": "x.csv", "mimeType": "text/csv", "buffer": HEADER.encode()}
    first = page.request.post(
        f"{host.url}/console/people/import", multipart={"file": file, "csrftoken": token}
    )
    assert first.status == 403
    assert "安全校验未通过" in first.text()
    wrong = page.request.post(f"{host.url}/console/people/import", multipart={"csrftoken": "x", "file": file})
    assert wrong.status == 403
    assert "安全校验未通过" in wrong.text()
    # A token hidden behind 300 KiB of other fields is not looked for (nor the body kept) that far.
    padded = page.request.post(
        f"{host.url}/console/people/import", multipart={"padding": "x" * 300 * 1024, "csrftoken": token}
    )
    assert padded.status == 403


def test_at_the_origin_the_page_shows_her_certificate_and_its_versions(page: Page, origin: LocalNode) -> None:
    number = new_number()
    married = {"marital_status": "first_marriage", "marriage_date": f"{int(number[6:10]) + 24}-05-01"}
    person_id = register(origin, number, a_name(), origin_node="411627", **married)
    sign_in(page, origin, Role.auditor)
    page.goto(f"{origin.url}/console/people/{person_id}")
    certificate = page.locator("#certificate")
    expect(certificate).to_contain_text("411627-")
    expect(certificate).to_contain_text("有效")
    expect(page.get_by_role("cell", name="issued (信息登记入库)")).to_be_visible()
    assert page.get_by_role("button", name="向户籍地查验婚育证明").count() == 0  # her origin is here
