"""Accounts through the staff API and the CLI, against a real node: several roles, token expiry,
revocation and deactivation at once (the API, in the node's process) and within the refresh time
(the CLI, another process), console sessions ended, and each change in the node's audit log."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from service.clock import utcnow
from service.db import make_engine
from service.localnet import LocalNode, wait_for
from service.staff.passwords import set_password
from tests.conftest import FAST, build_network, free_ports

STAFF = "/api/v1/staff"
CASES = "/api/v1/verification-requests"
PRINTED_TOKEN = re.compile(r"^yp_[0-9]+_\S+$", re.M)
_CSRF = re.compile(r'name="csrftoken" value="([^"]+)"')


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    root = tmp_path_factory.mktemp("staff-api")
    (node,) = build_network(root, [("410105", "金水区")], free_ports(1), dict(FAST))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def admin(node: LocalNode) -> str:
    """A pure admin account (the network's own admin is also 负责人)."""
    out = node.cli("staff", "add", "--username", f"sys-{secrets.token_hex(3)}", "--role", "admin")
    match = PRINTED_TOKEN.search(out)
    assert match is not None, out
    return match.group(0)


def call(node: LocalNode, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return node.api(method, path, token=token, **kwargs)


def add(node: LocalNode, token: str, *roles: str, **extra: Any) -> dict[str, Any]:
    body = {"username": f"u-{secrets.token_hex(4)}", "roles": list(roles), **extra}
    answer = call(node, token, "POST", STAFF, json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def can_read_cases(node: LocalNode, token: str) -> int:
    return call(node, token, "GET", CASES).status_code


def console_login(node: LocalNode, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=node.url, timeout=30.0)
    token = _CSRF.search(client.get("/console/login").text)
    assert token is not None
    form = {"username": username, "password": password, "csrftoken": token.group(1)}
    assert client.post("/console/login", data=form, follow_redirects=False).status_code == 303
    assert client.get("/console/", follow_redirects=False).status_code == 200
    return client


def test_an_admin_adds_an_account_with_several_roles_and_changes_them(node: LocalNode) -> None:
    token = admin(node)
    created = add(node, token, "auditor", token_days=7)
    account, their = created["account"], created["token"]
    assert account["roles"] == ["auditor"]
    assert account["token_state"] == "active"
    expires = datetime.fromisoformat(account["token_expires_at"])
    assert timedelta(days=7) - timedelta(minutes=5) < expires - utcnow() <= timedelta(days=7)
    assert can_read_cases(node, their) == 200
    assert call(node, their, "POST", CASES, json={}).status_code == 403  # an auditor sends nothing

    answer = call(
        node, token, "PUT", f"{STAFF}/{account['id']}/roles", json={"roles": ["operator", "auditor"]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["roles"] == ["auditor", "operator"]
    assert answer.json()["role"] == "operator"
    assert call(node, their, "POST", CASES, json={}).status_code == 422  # allowed now: at once
    assert call(node, their, "GET", STAFF).status_code == 403  # and still no admin

    for body in ({"roles": []}, {"roles": ["root"]}, {"roles": ["operator"], "extra": 1}):
        bad = call(node, token, "PUT", f"{STAFF}/{account['id']}/roles", json=body)
        assert bad.status_code == 422, body
    listed = call(node, token, "GET", STAFF).json()["items"]
    assert any(item["id"] == account["id"] and item["roles"] == ["auditor", "operator"] for item in listed)


def test_an_admin_handles_no_case_and_cannot_change_their_own_account(node: LocalNode) -> None:
    token = admin(node)
    me = call(node, token, "GET", f"{STAFF}/{token.split('_')[1]}").json()  # yp_<id>_<secret>
    assert me["roles"] == ["admin"]
    assert can_read_cases(node, token) == 403
    assert call(node, token, "GET", "/api/v1/notices").status_code == 403
    own = [
        call(node, token, "PUT", f"{STAFF}/{me['id']}/roles", json={"roles": ["admin", "operator"]}),
        call(node, token, "POST", f"{STAFF}/{me['id']}/deactivate"),
        call(node, token, "POST", f"{STAFF}/{me['id']}/revoke"),
        call(node, token, "POST", f"{STAFF}/{me['id']}/token", json={}),
    ]
    assert [a.status_code for a in own] == [409] * 4
    assert [a.json()["code"] for a in own] == ["own_account"] * 4
    assert can_read_cases(node, token) == 403  # the token still works (403: no case role)


def test_revocation_through_the_api_takes_effect_at_once_and_a_new_token_works(node: LocalNode) -> None:
    token = admin(node)
    created = add(node, token, "operator")
    staff_id, old = created["account"]["id"], created["token"]
    assert can_read_cases(node, old) == 200
    revoked = call(node, token, "POST", f"{STAFF}/{staff_id}/revoke")
    assert revoked.json()["token_state"] == "revoked"
    refused = call(node, old, "GET", CASES)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    issued = call(node, token, "POST", f"{STAFF}/{staff_id}/token", json={"token_days": 30})
    assert issued.status_code == 200, issued.text
    assert issued.json()["account"]["token_state"] == "active"
    assert can_read_cases(node, issued.json()["token"]) == 200
    assert can_read_cases(node, old) == 401
    log = node.log_path.read_text(encoding="utf-8") if node.log_path else ""
    username = created["account"]["username"]
    for action in ("staff_created", "staff_token_revoked", "staff_token_issued"):
        assert f"action={action} target=staff:{username}" in log, action


def test_deactivation_through_the_api_ends_the_token_and_the_console_sessions(node: LocalNode) -> None:
    token = admin(node)
    created = add(node, token, "operator")
    account, their = created["account"], created["token"]
    password = f"Yp-{secrets.token_urlsafe(9)}-9a"
    engine = make_engine(node.database_url)
    try:
        set_password(account["id"], password, must_change=False, now=utcnow(), engine=engine)
    finally:
        engine.dispose()
    browser = console_login(node, account["username"], password)
    try:
        answer = call(node, token, "POST", f"{STAFF}/{account['id']}/deactivate")
        assert answer.json()["token_state"] == "deactivated"
        assert can_read_cases(node, their) == 401
        assert browser.get("/console/", follow_redirects=False).status_code != 200  # signed out
    finally:
        browser.close()
    assert call(node, token, "POST", f"{STAFF}/{account['id']}/reactivate").json()["active"] is True
    assert can_read_cases(node, their) == 200  # its token again (console sessions stay ended)


def test_the_cli_revokes_deactivates_and_lists_within_the_refresh_time(node: LocalNode) -> None:
    token = admin(node)
    created = add(node, token, "operator")
    username, their = created["account"]["username"], created["token"]
    assert can_read_cases(node, their) == 200  # verified once: remembered by the node
    node.cli("staff", "revoke", username)  # another process: the node sees it within the refresh
    wait_for(lambda: can_read_cases(node, their) == 401)
    listed = node.cli("staff", "list")
    assert re.search(rf"{re.escape(username)}\s.*revoked", listed), listed

    again = add(node, token, "operator")
    name2, token2 = again["account"]["username"], again["token"]
    assert can_read_cases(node, token2) == 200
    node.cli("staff", "deactivate", name2)
    wait_for(lambda: can_read_cases(node, token2) == 401)
    node.cli("staff", "reactivate", name2)
    wait_for(lambda: can_read_cases(node, token2) == 200)
    node.cli("staff", "roles", name2, "--role", "auditor", "--role", "admin")
    wait_for(lambda: call(node, token2, "GET", STAFF).status_code == 200)
    assert call(node, token2, "POST", CASES, json={}).status_code == 403
