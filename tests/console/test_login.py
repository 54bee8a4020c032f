"""Signing in and out in a real Chromium against a real node: the forms, the cookie, CSRF, lock-out."""

from __future__ import annotations

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from service.localnet import LocalNode
from service.models import Role
from tests.console.conftest import new_login, sign_in


def test_sign_in_shows_the_home_page_and_sign_out_ends_the_session(page: Page, host: LocalNode) -> None:
    page.goto(f"{host.url}/console/")
    expect(page).to_have_url(f"{host.url}/console/login?next=/console/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    sign_in(page, host, Role.operator)
    expect(page).to_have_url(f"{host.url}/console/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("金水区")
    expect(page.get_by_text("operator-410105（经办人）")).to_be_visible()
    page.get_by_role("button", name="退出").click()
    expect(page.get_by_role("status")).to_have_text("您已退出。")
    page.goto(f"{host.url}/console/")
    expect(page).to_have_url(f"{host.url}/console/login?next=/console/")


def test_the_session_cookie_is_http_only_and_same_site_strict(
    page: Page, context: BrowserContext, host: LocalNode
) -> None:
    sign_in(page, host, Role.auditor)
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["yp_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/console"
    assert "yp_console" not in page.evaluate("document.cookie")


def test_a_wrong_password_and_an_unknown_user_get_the_same_message(page: Page, host: LocalNode) -> None:
    username, _ = host.logins[Role.operator]
    sign_in(page, host, (username, "Wrong-password-1"))
    expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
    sign_in(page, host, ("no-such-user", "Wrong-password-1"))
    expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
    expect(page).to_have_url(f"{host.url}/console/login")


def test_five_failures_lock_the_account_with_a_clear_message(page: Page, host: LocalNode) -> None:
    username, password = new_login(host, Role.operator)
    for _ in range(4):
        sign_in(page, host, (username, "Wrong-password-1"))
        expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
    sign_in(page, host, (username, "Wrong-password-1"))
    expect(page.get_by_role("alert")).to_contain_text("账户已锁定")
    sign_in(page, host, (username, password))  # the right password, while locked
    expect(page.get_by_role("alert")).to_contain_text("账户已锁定")
    expect(page).to_have_url(f"{host.url}/console/login")


def test_a_new_password_must_be_set_at_the_first_sign_in(page: Page, host: LocalNode) -> None:
    username, password = new_login(host, Role.operator, must_change=True)
    sign_in(page, host, (username, password))
    expect(page).to_have_url(f"{host.url}/console/password")
    page.goto(f"{host.url}/console/")  # nothing else opens before the change
    expect(page).to_have_url(f"{host.url}/console/password")

    def change(current: str, new: str) -> None:
        page.get_by_label("当前密码").fill(current)
        page.get_by_label("新密码", exact=True).fill(new)
        page.get_by_label("再输一次新密码").fill(new)
        page.get_by_role("button", name="保存新密码").click()

    change(password, "short")
    expect(page.locator("#password-errors")).to_contain_text("密码至少 12 位")
    change(password, password)  # the same one again: refused
    expect(page.locator("#password-errors")).to_contain_text("最近 5 次")
    change(password, "Brand-new-pass-2026")
    expect(page).to_have_url(f"{host.url}/console/")


def test_a_form_without_its_csrf_token_is_refused(
    page: Page, context: BrowserContext, host: LocalNode
) -> None:
    sign_in(page, host, Role.operator)
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    # The browser's own cookies, but a form another site could make: no csrftoken field.
    answer = httpx.post(f"{host.url}/console/logout", cookies=cookies, data={}, timeout=10)
    assert answer.status_code == 403
    assert "安全校验未通过" in answer.text
    page.goto(f"{host.url}/console/")  # the forged form did not end the session
    expect(page).to_have_url(f"{host.url}/console/")
    login = httpx.post(  # a sign-in form posted from elsewhere, with no cookie at all
        f"{host.url}/console/login", data={"username": "x", "password": "y"}, timeout=10
    )
    assert login.status_code == 403


def test_an_unknown_console_page_is_a_chinese_404(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.operator)
    answer = page.goto(f"{host.url}/console/no-such-page")
    assert answer is not None
    assert answer.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("页面不存在")
    assert "default-src 'self'" in (answer.headers.get("content-security-policy") or "")
