"""Bad input to the staff API is a 4xx, never a 5xx: ids and pages past what the database stores.

An INTEGER column holds 32 bits on PostgreSQL and 64 on SQLite; a larger id or page used to reach
the query and fail there (500). The contract bounds them (1 … 2147483647, pages 1 … 100000), so
the node refuses them before any query, the same way on both backends. Against real nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.localnet import LocalNode, build_network
from tests.conftest import FAST, backend_urls, free_ports
from tests.people.factories import HERE, person

PROBLEM = "application/problem+json"
INT32 = 2**31  # one past the largest id
INT64 = 2**63  # one past what SQLite stores
HUGE = 10**20
TOO_BIG = (INT32, INT64, HUGE)
ID_PATHS = (
    "GET /api/v1/people/{id}",
    "PATCH /api/v1/people/{id}",
    "POST /api/v1/people/{id}/merge",
    "GET /api/v1/births/{id}",
    "POST /api/v1/births/{id}/review",
    "GET /api/v1/certificates/{id}",
    "PATCH /api/v1/certificates/{id}",
    "POST /api/v1/certificates/{id}/cancel",
    "POST /api/v1/certificates/checks/{id}/discrepancy-request",
    "POST /api/v1/notices/{id}/read",
    "GET /api/v1/notifications/{id}",
    "POST /api/v1/notifications/{id}/ack",
    "GET /api/v1/verification-requests/{id}",
    "POST /api/v1/verification-requests/{id}/ack",
    "POST /api/v1/verification-requests/{id}/reply",
)
LISTS = (
    "/api/v1/people",
    "/api/v1/births",
    "/api/v1/certificates/checks",
    "/api/v1/notices",
    "/api/v1/notifications",
    "/api/v1/verification-requests",
    "/api/v1/outbox",
)
SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}


def refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A problem+json 4xx of one of ``statuses`` (never a 5xx); its body."""
    assert response.status_code in statuses, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    return body


def fields(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors") or []}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """One node for the module, on SQLite or PostgreSQL; its admin may call every staff operation."""
    root = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    (jinshui,) = build_network(root, [(HERE, "金水区")], free_ports(1), FAST, backend_urls(request))
    jinshui.start()
    yield jinshui
    jinshui.stop()


def admin(node: LocalNode, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return node.api(method, path, admin=True, **kwargs)


def test_ids_past_the_database_range_are_refused(node: LocalNode) -> None:
    for template in ID_PATHS:
        method, path = template.split()
        for number in TOO_BIG:
            response = admin(node, method, path.format(id=number), json={})
            problem = refused(response, 422)
            assert any(f.endswith("_id") for f in fields(problem)), (template, problem)
        refused(admin(node, method, path.format(id=0), json={}), 422)
        refused(admin(node, method, path.format(id="abc"), json={}), 404)  # no such path


def test_pages_past_the_range_are_refused(node: LocalNode) -> None:
    for path in LISTS:
        for page in (100_001, INT32, INT64 - 1, HUGE):
            problem = refused(admin(node, "GET", path, params={"page": page}), 422)
            assert fields(problem) == {"query.page"}, (path, problem)
        assert admin(node, "GET", path, params={"page": 100_000}).status_code == 200, path


def test_ids_in_queries_and_bodies_past_the_range_are_refused(node: LocalNode) -> None:
    created = admin(node, "POST", "/api/v1/people", json=person(seq=1))
    assert created.status_code == 201, created.text
    mine = created.json()["id"]
    for number in TOO_BIG:
        for path, params in (
            ("/api/v1/certificates/checks", {"person_id": number}),
            ("/api/v1/certificates/check-status", {"person_id": number, "year": 2026}),
        ):
            assert fields(refused(admin(node, "GET", path, params=params), 422)) == {"query.person_id"}
        for path, body, field in (
            ("/api/v1/certificates", {"person_id": number}, "person_id"),
            (f"/api/v1/people/{mine}/merge", {"duplicate_id": number}, "duplicate_id"),
            (
                "/api/v1/births",
                {
                    "person_id": number,
                    "child": {"birth_date": "2026-01-02", "sex": "F"},
                    "commitment_signed_on": "2026-01-05",
                },
                "person_id",
            ),
            (
                "/api/v1/notifications",
                {
                    "recipient": "411627",
                    "person_id": number,
                    "subject": SUBJECT,
                    "kind": "health_check",
                    "occurred_on": "2026-01-02",
                    "details": {
                        "checked_on": "2026-01-02",
                        "iud": "normal",
                        "pregnancy": "negative",
                        "disease": "none",
                    },
                },
                "person_id",
            ),
        ):
            assert fields(refused(admin(node, "POST", path, json=body), 422)) == {field}, path


@pytest.mark.parametrize(
    ("seq", "field"), list(enumerate(["name", "sex", "birth_date", "host_node", "children"], 10))
)
def test_patch_cannot_clear_what_every_record_has(node: LocalNode, seq: int, field: str) -> None:
    created = admin(node, "POST", "/api/v1/people", json=person(seq=seq))
    assert created.status_code == 201, created.text
    path = f"/api/v1/people/{created.json()['id']}"
    assert fields(refused(admin(node, "PATCH", path, json={field: None}), 422)) == {field}
    assert admin(node, "GET", path).json()[field] == created.json()[field]  # unchanged
    # null still clears an optional field
    cleared = admin(node, "PATCH", path, json={"arrived_on": None, "origin_node": None})
    assert cleared.status_code == 200, cleared.text


@pytest.mark.parametrize("account", ["1" * 11, "9" * 20, "2147483648", "0", "01"])
def test_token_with_an_account_id_past_the_range_is_a_401(node: LocalNode, account: str) -> None:
    token = f"yp_{account}_{'a' * 43}"
    problem = refused(node.api("GET", "/api/v1/people", token=token), 401)
    assert problem["code"] == "not_authenticated"
    assert "Traceback" not in str(problem)
