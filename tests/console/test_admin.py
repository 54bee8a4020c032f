"""管理 in a real Chromium: accounts (add, one-time passwords, deactivation, token revocation, roles,
unlock), peers and their keys, the node's status — and every admin page and form refused to others."""

from __future__ import annotations

import re
import secrets

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Browser, Page, expect
from sqlmodel import Session, select

from service.db import make_engine
from service.localnet import LocalNode
from service.models import Peer, Role, Staff
from service.signing.keys import public_key_text
from tests.console.conftest import VIEWPORT, new_login, sign_in

CASES = "/api/v1/verification-requests"


def csrf(page: Page) -> str:
    token = page.locator("input[name=csrftoken]").first.get_attribute("value")
    assert token
    return token


def staff_row(node: LocalNode, username: str) -> Staff:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            staff = session.exec(select(Staff).where(Staff.username == username)).one()
            session.expunge(staff)
            return staff
    finally:
        engine.dispose()


def open_account(page: Page, node: LocalNode, username: str) -> int:
    page.goto(f"{node.url}/console/admin/staff")
    page.get_by_role("link", name=username, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"账户：{username}")
    match = re.search(r"/console/admin/staff/(\d+)$", page.url)
    assert match
    return int(match.group(1))


def new_key(node_id: str) -> str:
    label = f"k{secrets.token_hex(3)}"
    return f"{node_id}/{label}={public_key_text(Ed25519PrivateKey.generate().public_key())}"


def api_status(node: LocalNode, token: str) -> int:
    return node.api("GET", CASES, token=token).status_code


def test_an_operator_gets_403_on_every_admin_page_and_form(page: Page, host: LocalNode) -> None:
    target, _ = new_login(host, Role.operator)
    target_id = staff_row(host, target).id
    sign_in(page, host, Role.operator)
    expect(page.get_by_role("navigation", name="主菜单").get_by_role("link", name="管理")).to_have_count(0)
    token = csrf(page)  # from the home page's sign-out form
    for path in (
        "/console/admin",
        "/console/admin/staff",
        f"/console/admin/staff/{target_id}",
        "/console/admin/peers",
        "/console/admin/status",
    ):
        response = page.goto(f"{host.url}{path}")
        assert response is not None
        assert response.status == 403, path
        expect(page.get_by_role("heading", level=1)).to_have_text("无权访问")
    posts = [
        ("/console/admin/staff", {"username": f"x-{secrets.token_hex(3)}", "role": "admin"}),
        (f"/console/admin/staff/{target_id}/deactivate", {}),
        (f"/console/admin/staff/{target_id}/reactivate", {}),
        (f"/console/admin/staff/{target_id}/role", {"role": "admin"}),
        (f"/console/admin/staff/{target_id}/unlock", {}),
        (f"/console/admin/staff/{target_id}/password", {}),
        (f"/console/admin/staff/{target_id}/token", {}),
        (f"/console/admin/staff/{target_id}/revoke", {}),
        (
            "/console/admin/peers",
            {"node_id": "419801", "name": "测试县", "url": "http://127.0.0.1:9", "key": new_key("419801")},
        ),
        ("/console/admin/peers/411627/keys", {"key": new_key("411627")}),
        ("/console/admin/peers/keys/retire", {"keyid": "411627/k1"}),
    ]
    for path, form in posts:
        answer = page.request.post(f"{host.url}{path}", form={"csrftoken": token, **form})
        assert answer.status == 403, path
        assert "无权访问" in answer.text(), path  # the role's refusal, not the CSRF check's
    after = staff_row(host, target)
    assert after.active
    assert after.role == Role.operator
    assert after.role_set == {Role.operator}
    assert after.token_revoked_at is None
    assert after.password_changed_at is not None
    engine = make_engine(host.database_url)
    try:
        with Session(engine) as session:
            assert session.get(Peer, "419801") is None
    finally:
        engine.dispose()


def test_an_added_account_signs_in_with_its_one_time_password_and_must_change_it(
    page: Page, browser: Browser, host: LocalNode
) -> None:
    sign_in(page, host, Role.admin)
    page.get_by_role("navigation", name="主菜单").get_by_role("link", name="管理").click()
    page.get_by_role("link", name="账户", exact=True).first.click()
    expect(page).to_have_url(f"{host.url}/console/admin/staff")
    page.get_by_label("用户名").fill("bad name")
    page.get_by_label("角色").select_option("operator")
    page.locator("#new-username").evaluate("e => e.removeAttribute('pattern')")  # the server checks too
    page.get_by_role("button", name="新增账户").click()
    expect(page.locator("#add-error")).to_contain_text("用户名须为 2–64 位")

    username = f"wang.{secrets.token_hex(3)}"
    page.get_by_label("用户名").fill(username)
    page.get_by_label("角色").select_option("supervisor")
    page.get_by_role("button", name="新增账户").click()
    expect(page).to_have_url(f"{host.url}/console/admin/staff")  # the POST's answer: no secret in a URL
    expect(page.get_by_role("heading", level=1)).to_have_text(f"已新增账户：{username}（负责人）")
    password = page.locator("#one-time-password").inner_text()
    token = page.locator("#bearer-token").inner_text()
    assert password not in page.url
    assert token.startswith("yp_")
    assert api_status(host, token) == 200

    page.get_by_role("link", name="返回账户列表").click()
    expect(page.locator("body")).not_to_contain_text(password)  # shown once
    expect(page.locator("body")).to_contain_text(username)
    page.get_by_label("用户名").fill(username)
    page.get_by_role("button", name="新增账户").click()
    expect(page.locator("#add-error")).to_contain_text("已被使用")

    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        theirs = context.new_page()
        sign_in(theirs, host, (username, password))
        expect(theirs).to_have_url(f"{host.url}/console/password")
        theirs.get_by_label("当前密码").fill(password)
        theirs.get_by_label("新密码", exact=True).fill("Their-own-pass-2026")
        theirs.get_by_label("再输一次新密码").fill("Their-own-pass-2026")
        theirs.get_by_role("button", name="保存新密码").click()
        expect(theirs).to_have_url(f"{host.url}/console/")
        expect(theirs.get_by_text(f"{username}（负责人）")).to_be_visible()
    finally:
        context.close()


def test_deactivation_ends_the_session_and_the_token(page: Page, browser: Browser, host: LocalNode) -> None:
    username, password = new_login(host, Role.operator)
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        theirs = context.new_page()
        sign_in(theirs, host, (username, password))
        expect(theirs).to_have_url(f"{host.url}/console/")

        sign_in(page, host, Role.admin)
        open_account(page, host, username)
        page.get_by_role("button", name="重置令牌").click()
        token = page.locator("#bearer-token").inner_text()
        assert api_status(host, token) == 200
        page.get_by_role("link", name="已交接，返回该账户").click()
        page.get_by_role("button", name="停用账户").click()
        expect(page.get_by_role("status")).to_contain_text("已停用该账户")
        expect(page.locator("#account-state")).to_have_text("已停用")

        theirs.goto(f"{host.url}/console/outgoing")
        expect(theirs).to_have_url(f"{host.url}/console/login?next=/console/outgoing")
        assert api_status(host, token) == 401
        sign_in(theirs, host, (username, password))
        expect(theirs.get_by_role("alert")).to_have_text("用户名或密码错误。")

        page.get_by_role("button", name="启用账户").click()
        expect(page.get_by_role("status")).to_contain_text("已启用该账户")
        assert api_status(host, token) == 200
        sign_in(theirs, host, (username, password))
        expect(theirs).to_have_url(f"{host.url}/console/")
    finally:
        context.close()


def test_revoking_tokens_stops_the_old_one_and_the_new_one_works(page: Page, host: LocalNode) -> None:
    username, _ = new_login(host, Role.operator)
    sign_in(page, host, Role.admin)
    open_account(page, host, username)
    page.get_by_role("button", name="重置令牌").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("已重置接口令牌")
    old = page.locator("#bearer-token").inner_text()
    assert api_status(host, old) == 200
    page.get_by_role("link", name="已交接，返回该账户").click()
    page.get_by_role("button", name="重置令牌").click()
    new = page.locator("#bearer-token").inner_text()
    assert new != old
    assert api_status(host, old) == 401
    assert api_status(host, new) == 200

    page.get_by_role("link", name="已交接，返回该账户").click()
    expect(page.locator("#token-state")).to_contain_text("有效期至")
    page.get_by_role("button", name="吊销令牌").click()  # no new token this time
    expect(page.get_by_role("status")).to_contain_text("已吊销接口令牌")
    expect(page.locator("#token-state")).to_have_text("已吊销")
    expect(page.get_by_role("button", name="吊销令牌")).to_have_count(0)
    assert api_status(host, new) == 401


def test_password_reset_unlock_and_role(page: Page, browser: Browser, host: LocalNode) -> None:
    username, password = new_login(host, Role.operator)
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        theirs = context.new_page()
        for _ in range(5):
            sign_in(theirs, host, (username, "Wrong-password-1"))
        expect(theirs.get_by_role("alert")).to_contain_text("账户已锁定")

        sign_in(page, host, Role.admin)
        page.goto(f"{host.url}/console/admin/staff")
        expect(page.locator("tr", has_text=username)).to_contain_text("锁定至")
        open_account(page, host, username)
        page.get_by_role("button", name="解锁账户").click()
        expect(page.get_by_role("status")).to_contain_text("已解锁")
        sign_in(theirs, host, (username, password))
        expect(theirs).to_have_url(f"{host.url}/console/")

        roles = page.locator("#roles-form")
        roles.get_by_label("审计").check()
        roles.get_by_label("经办人").uncheck()
        page.get_by_role("button", name="修改角色").click()
        expect(page.get_by_role("status")).to_contain_text("已修改角色")
        expect(page.locator("#account-roles")).to_have_text("审计")
        roles.get_by_label("经办人").check()  # several roles: 经办人 and 审计
        page.get_by_role("button", name="修改角色").click()
        expect(page.locator("#account-roles")).to_have_text("经办人、审计")
        assert staff_row(host, username).role_set == {Role.operator, Role.auditor}
        roles.get_by_label("经办人").uncheck()
        roles.get_by_label("审计").uncheck()
        page.get_by_role("button", name="修改角色").click()  # none ticked: refused, nothing changed
        expect(page.get_by_role("alert")).to_have_text("请至少选择一个角色。")
        assert staff_row(host, username).role_set == {Role.operator, Role.auditor}
        page.goto(f"{host.url}/console/admin/staff/{staff_row(host, username).id}")

        page.get_by_role("button", name="重置密码").click()
        one_time = page.locator("#one-time-password").inner_text()
        theirs.goto(f"{host.url}/console/")  # the reset ended their session
        expect(theirs).to_have_url(f"{host.url}/console/login?next=/console/")
        sign_in(theirs, host, (username, password))
        expect(theirs.get_by_role("alert")).to_have_text("用户名或密码错误。")
        sign_in(theirs, host, (username, one_time))
        expect(theirs).to_have_url(f"{host.url}/console/password")
    finally:
        context.close()


def test_an_admin_cannot_deactivate_or_demote_themself(page: Page, host: LocalNode) -> None:
    me = new_login(host, Role.admin)
    sign_in(page, host, me)
    staff_id = open_account(page, host, me[0])
    expect(page.get_by_role("button", name="停用账户")).to_have_count(0)
    expect(page.get_by_role("button", name="修改角色")).to_have_count(0)
    token = csrf(page)
    answer = page.request.post(
        f"{host.url}/console/admin/staff/{staff_id}/deactivate", form={"csrftoken": token}
    )
    assert answer.status == 409
    assert "不能停用自己的账户" in answer.text()
    answer = page.request.post(
        f"{host.url}/console/admin/staff/{staff_id}/role", form={"csrftoken": token, "role": "operator"}
    )
    assert answer.status == 409
    assert "不能取消自己的管理员角色" in answer.text()
    mine = staff_row(host, me[0])
    assert mine.active
    assert mine.role == Role.admin


def test_a_peer_key_is_added_listed_and_retired(page: Page, host: LocalNode, origin: LocalNode) -> None:
    sign_in(page, host, Role.admin)
    page.goto(f"{host.url}/console/admin/peers")
    section = page.locator(f"#peer-{origin.node_id}")
    expect(section.get_by_role("heading")).to_have_text("太康县（411627）")
    own = origin.public_key.split("=")[0]
    expect(section.locator(f"tr[data-keyid='{own}']")).to_contain_text("有效")

    field = section.get_by_label("新增公钥（太康县）")
    field.fill("411627/k9=too-short")
    section.get_by_role("button", name="新增公钥").click()
    expect(page.locator(f"#peer-{origin.node_id}").get_by_role("alert")).to_contain_text("公钥格式不对")
    field.fill(new_key("410105"))
    section.get_by_role("button", name="新增公钥").click()
    expect(page.locator(f"#peer-{origin.node_id}").get_by_role("alert")).to_contain_text("不属于节点 411627")

    key = new_key(origin.node_id)
    keyid = key.split("=")[0]
    field.fill(key)
    section.get_by_role("button", name="新增公钥").click()
    expect(page.get_by_role("status")).to_have_text("已新增公钥。")
    row = section.locator(f"tr[data-keyid='{keyid}']")
    expect(row).to_contain_text("有效")
    row.get_by_role("button", name=f"停用公钥 {keyid}").click()
    expect(page.get_by_role("status")).to_contain_text("已停用该公钥")
    expect(row).to_contain_text("已停用")
    expect(row.get_by_role("button")).to_have_count(0)
    # The peer's own key is untouched.
    own = origin.public_key.split("=")[0]
    expect(section.locator(f"tr[data-keyid='{own}']")).to_contain_text("有效")


def test_a_peer_is_added_with_its_input_checked(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.admin)
    page.goto(f"{host.url}/console/admin/peers")
    page.get_by_label("节点代码").fill("41980")
    page.get_by_label("名称").fill("测试县")
    page.get_by_label("地址").fill("ftp://example.org")
    page.get_by_label("公钥", exact=True).fill("nonsense")
    page.locator("#peer-node-id").evaluate("e => e.removeAttribute('maxlength')")
    page.get_by_role("button", name="新增对端").click()
    error = page.locator("#peer-error")
    expect(error).to_contain_text("6 位数字")
    expect(error).to_contain_text("http:// 或 https://")
    expect(page.get_by_label("名称")).to_have_value("测试县")  # the form keeps what was typed

    node_id = f"4198{secrets.randbelow(90) + 10}"
    page.get_by_label("节点代码").fill(node_id)
    page.get_by_label("地址").fill("https://yipanqi.test.example")
    page.get_by_label("公钥", exact=True).fill(new_key("411627"))
    page.get_by_role("button", name="新增对端").click()
    expect(page.locator("#peer-error")).to_contain_text(f"不属于节点 {node_id}")
    page.get_by_label("公钥", exact=True).fill(new_key(node_id))
    page.get_by_role("button", name="新增对端").click()
    expect(page.get_by_role("status")).to_have_text("已保存对端。")
    expect(page.locator(f"#peer-{node_id}")).to_contain_text("https://yipanqi.test.example")
    page.get_by_label("节点代码").fill(host.node_id)  # this node itself
    page.get_by_label("名称").fill("金水区")
    page.get_by_label("地址").fill("https://self.example")
    page.get_by_label("公钥", exact=True).fill(new_key(host.node_id))
    page.get_by_role("button", name="新增对端").click()
    expect(page.locator("#peer-error")).to_contain_text("本节点自己的代码")


def test_the_node_status_page(page: Page, host: LocalNode) -> None:
    sign_in(page, host, Role.admin)
    page.goto(f"{host.url}/console/admin/status")
    expect(page.get_by_role("heading", level=1)).to_have_text("节点状态：金水区（410105）")
    for count in ("#count-queued", "#count-in-flight", "#count-dead"):
        expect(page.locator(count)).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#database")).to_contain_text("SQLite：可连接")
    expect(page.locator("#database")).not_to_contain_text("password")
    expect(page.locator("#scheduler")).to_contain_text("正常")
    expect(page.locator("#relay")).to_contain_text("正常")
