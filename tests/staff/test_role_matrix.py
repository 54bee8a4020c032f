"""Role × route: every staff API route and every console form (POST), for every role, allowed or 403.

The routes come from the app's own router, so a route added later and missing from the tables
below fails ``test_every_route_is_in_the_matrix`` until someone decides who may call it. Each role
is a separate account holding that role only; one more holds admin and operator together, which
may do exactly what either may (an account's roles add up). Calls go to a real node process. An
allowed call is anything but 401/403 (a 404 for an id that does not exist, a 422 for an empty
body): the role check runs before the body and the path are validated.

Separation of duties (等保 2.0): admin manages accounts, peers, keys and the outbox and handles no
case — no 协查, no import, no merge, no birth review, no notices, no ID number revealed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from service.clock import utcnow
from service.config import Settings
from service.db import make_engine, transaction
from service.localnet import LocalNode
from service.main import create_app
from service.models import Role
from service.staff.passwords import set_password
from service.staff.service import create_staff
from tests.conftest import FAST, build_network, free_ports

OP, SV, AU, AD = Role.operator, Role.supervisor, Role.auditor, Role.admin
READ = frozenset({OP, SV, AU})  # case work, reading
ACT = frozenset({OP, SV})  # case work that changes something
SUP = frozenset({SV})  # 负责人's decisions
ADMIN = frozenset({AD})  # the system, never cases
SIGNED_IN = frozenset(Role)  # any account (its own password, signing out): no role check
PUBLIC = frozenset()  # no sign-in at all (the sign-in form)

STAFF_API: dict[str, frozenset[Role]] = {
    "POST /api/v1/verification-requests": ACT,
    "GET /api/v1/verification-requests": READ,
    "GET /api/v1/verification-requests/{case_id:int}": READ,
    "POST /api/v1/verification-requests/{case_id:int}/reveal": ACT,
    "POST /api/v1/verification-requests/{case_id:int}/ack": ACT,
    "POST /api/v1/verification-requests/{case_id:int}/reply": ACT,
    "POST /api/v1/notifications": ACT,
    "GET /api/v1/notifications": READ,
    "GET /api/v1/notifications/{notification_id:int}": READ,
    "POST /api/v1/notifications/{notification_id:int}/reveal": ACT,
    "POST /api/v1/notifications/{notification_id:int}/ack": ACT,
    "POST /api/v1/births": ACT,
    "GET /api/v1/births": READ,
    "GET /api/v1/births/{registration_id:int}": READ,
    "POST /api/v1/births/{registration_id:int}/review": SUP,
    "POST /api/v1/certificates": ACT,
    "POST /api/v1/certificates/lookup": ACT,
    "GET /api/v1/certificates/checks": READ,
    "POST /api/v1/certificates/checks/{check_id:int}/discrepancy-request": ACT,
    "GET /api/v1/certificates/check-rate": READ,
    "GET /api/v1/certificates/check-status": READ,
    "GET /api/v1/certificates/{certificate_id:int}": READ,
    "PATCH /api/v1/certificates/{certificate_id:int}": ACT,
    "POST /api/v1/certificates/{certificate_id:int}/cancel": ACT,
    "GET /api/v1/outbox": ADMIN,
    "POST /api/v1/outbox/dead/requeue": ADMIN,
    "POST /api/v1/outbox/{message_id}/requeue": ADMIN,
    "POST /api/v1/people": ACT,
    "GET /api/v1/people": READ,
    "POST /api/v1/people/search": READ,
    "POST /api/v1/people/import": ACT,
    "GET /api/v1/people/{person_id:int}": READ,
    "POST /api/v1/people/{person_id:int}/reveal": ACT,
    "PATCH /api/v1/people/{person_id:int}": ACT,
    "POST /api/v1/people/{person_id:int}/merge": SUP,
    "GET /api/v1/reports/{month}.xlsx": READ,
    "GET /api/v1/reports/{month}.csv": READ,
    "GET /api/v1/reports/{month}": READ,
    "POST /api/v1/reports/{month}/regenerate": SUP,
    "GET /api/v1/notices": READ,
    "POST /api/v1/notices/{notice_id:int}/read": ACT,
    "GET /api/v1/staff": ADMIN,
    "POST /api/v1/staff": ADMIN,
    "GET /api/v1/staff/{staff_id:int}": ADMIN,
    "PUT /api/v1/staff/{staff_id:int}/roles": ADMIN,
    "POST /api/v1/staff/{staff_id:int}/token": ADMIN,
    "POST /api/v1/staff/{staff_id:int}/revoke": ADMIN,
    "POST /api/v1/staff/{staff_id:int}/deactivate": ADMIN,
    "POST /api/v1/staff/{staff_id:int}/reactivate": ADMIN,
}

CONSOLE_FORMS: dict[str, frozenset[Role]] = {
    "POST /console/login": PUBLIC,
    "POST /console/logout": SIGNED_IN,
    "POST /console/password": SIGNED_IN,
    "POST /console/cases/{case_id:int}/reveal": ACT,
    "POST /console/cases/{case_id:int}/ack": ACT,
    "POST /console/cases/{case_id:int}/reply": ACT,
    "POST /console/cases/{case_id:int}/assign": ACT,
    "POST /console/notifications/{item_id:int}/reveal": ACT,
    "POST /console/notifications/{item_id:int}/ack": ACT,
    "POST /console/notifications/{item_id:int}/assign": ACT,
    "POST /console/people/search": READ,
    "POST /console/people/{person_id:int}/reveal": ACT,
    "POST /console/people/{person_id:int}/lookup": ACT,
    "POST /console/people/lookup": ACT,
    "POST /console/people/checks/{check_id:int}/discrepancy": ACT,
    "POST /console/people/import": ACT,
    "POST /console/outgoing/messages/{message_id}/requeue": ADMIN,
    "POST /console/outgoing/cases/{case_id:int}/chase": ACT,
    "POST /console/admin/staff": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/deactivate": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/reactivate": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/role": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/unlock": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/password": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/token": ADMIN,
    "POST /console/admin/staff/{staff_id:int}/revoke": ADMIN,
    "POST /console/admin/peers": ADMIN,
    "POST /console/admin/peers/{node_id}/keys": ADMIN,
    "POST /console/admin/peers/keys/retire": ADMIN,
    "POST /console/stats/notices/{notice_id:int}/read": ACT,
}

# The accounts the matrix is run for: one of each role alone, and one holding two.
PRINCIPALS: dict[str, frozenset[Role]] = {
    **{role.value: frozenset({role}) for role in Role},
    "admin.operator": frozenset({AD, OP}),
}
# Path parameters: ids that do not exist, so an allowed call changes nothing (404).
PARAMS = {"message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10", "month": "2026-05", "node_id": "419999"}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
_CSRF = re.compile(r'name="csrftoken" value="([^"]+)"')


def _walk(routes: list[object], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):  # an included router (FastAPI keeps it as such)
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
        elif hasattr(route, "routes") and hasattr(route, "path"):
            yield from _walk(route.routes, prefix + route.path)  # type: ignore[attr-defined]


def app_routes(data_dir: Path) -> set[str]:
    """``METHOD path`` of every staff API route and console form, from the app's router."""
    app = create_app(Settings(data_dir=data_dir))
    found = set()
    for path, route in _walk(list(app.routes)):
        for method in route.methods:
            if path.startswith("/api/") or (path.startswith("/console") and method == "POST"):
                found.add(f"{method} {path}")
    return found


def concrete(path: str) -> str:
    return _PARAM.sub(lambda m: PARAMS.get(m.group(1), "999999"), path)


@dataclass
class Matrix:
    node: LocalNode
    tokens: dict[str, str]
    passwords: dict[str, str]

    def console(self, principal: str) -> tuple[httpx.Client, str]:
        """A signed-in console client of the principal and its CSRF form token."""
        client = httpx.Client(base_url=self.node.url, timeout=30.0, follow_redirects=False)
        page = client.get("/console/login")
        token = _CSRF.search(page.text)
        assert token is not None, page.text[:300]
        signed = client.post(
            "/console/login",
            data={
                "username": f"m-{principal}",
                "password": self.passwords[principal],
                "csrftoken": token.group(1),
            },
        )
        assert signed.status_code == 303, signed.text[:300]
        home = client.get("/console/")
        token = _CSRF.search(home.text)
        assert home.status_code == 200
        assert token is not None
        return client, token.group(1)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    root = tmp_path_factory.mktemp("matrix")
    (node,) = build_network(root, [("410105", "金水区")], free_ports(1), dict(FAST))
    tokens, passwords, ids = {}, {}, {}
    engine = make_engine(node.database_url)
    try:
        with transaction(engine) as tx:
            for name, roles in PRINCIPALS.items():
                staff, tokens[name] = create_staff(tx, username=f"m-{name}", roles=roles)
                ids[name] = staff.id
        for name, staff_id in ids.items():
            passwords[name] = f"Yp-{secrets.token_urlsafe(9)}-9a"
            set_password(staff_id, passwords[name], must_change=False, now=utcnow(), engine=engine)
    finally:
        engine.dispose()
    node.start()
    try:
        yield Matrix(node, tokens, passwords)
    finally:
        node.stop()


def test_every_route_is_in_the_matrix(matrix: Matrix) -> None:
    routes = app_routes(matrix.node.data_dir)
    table = set(STAFF_API) | set(CONSOLE_FORMS)
    assert sorted(routes - table) == [], "new routes: classify them in STAFF_API or CONSOLE_FORMS"
    assert sorted(table - routes) == [], "routes gone: remove them from the tables"


@pytest.mark.parametrize("principal", list(PRINCIPALS))
def test_staff_api_routes_are_allowed_or_403_by_role(matrix: Matrix, principal: str) -> None:
    held = PRINCIPALS[principal]
    headers = {"Authorization": f"Bearer {matrix.tokens[principal]}"}
    wrong = []
    with httpx.Client(base_url=matrix.node.url, timeout=30.0) as client:
        for route, allowed in STAFF_API.items():
            method, path = route.split(" ", 1)
            body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
            answer = client.request(method, concrete(path), headers=headers, **body)
            if held.isdisjoint(allowed):
                if answer.status_code != 403 or answer.json().get("code") != "forbidden":
                    wrong.append(f"{route}: {answer.status_code}, expected 403")
            elif answer.status_code in (401, 403):
                wrong.append(f"{route}: {answer.status_code}, expected allowed")
    assert wrong == []


def test_every_staff_api_route_needs_a_token(matrix: Matrix) -> None:
    wrong = []
    with httpx.Client(base_url=matrix.node.url, timeout=30.0) as client:
        for route in STAFF_API:
            method, path = route.split(" ", 1)
            answer = client.request(method, concrete(path))
            if answer.status_code != 401:
                wrong.append(f"{route}: {answer.status_code}")
    assert wrong == []


@pytest.mark.parametrize("principal", list(PRINCIPALS))
def test_console_forms_are_allowed_or_403_by_role(matrix: Matrix, principal: str) -> None:
    held = PRINCIPALS[principal]
    client, csrf = matrix.console(principal)
    wrong = []
    try:
        for route, allowed in CONSOLE_FORMS.items():
            if allowed in (PUBLIC, SIGNED_IN):
                continue  # below
            path = concrete(route.split(" ", 1)[1])
            answer = client.post(path, data={"csrftoken": csrf})
            refused = answer.status_code == 403
            assert "表单已过期" not in answer.text, route  # the CSRF check passed: the role decided
            if held.isdisjoint(allowed):
                if not refused or "无权访问" not in answer.text:
                    wrong.append(f"{route}: {answer.status_code}, expected 403")
            elif refused or answer.status_code == 401:
                wrong.append(f"{route}: {answer.status_code}, expected allowed")
        # Any account changes its own password (an empty form: a 422, nothing changed) and signs out.
        assert client.post("/console/password", data={"csrftoken": csrf}).status_code not in (401, 403)
        assert client.post("/console/logout", data={"csrftoken": csrf}).status_code == 303
        assert client.get("/console/").status_code != 200  # signed out
    finally:
        client.close()
    assert wrong == []


def test_the_sign_in_form_needs_no_session(matrix: Matrix) -> None:
    with httpx.Client(base_url=matrix.node.url, timeout=30.0) as client:
        token = _CSRF.search(client.get("/console/login").text)
        assert token is not None
        answer = client.post(
            "/console/login", data={"username": "m-nobody", "password": "x", "csrftoken": token.group(1)}
        )
        assert answer.status_code == 401  # a wrong password: the form again, with why
        assert "用户名或密码错误" in answer.text
