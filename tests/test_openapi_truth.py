"""The published contract says what the node does: error bodies, methods, signatures, input rules.

The document checks read ``openapi/openapi.json`` as the code generates it (tests/test_contracts.py
checks that the committed file is that); the rest ask a real node on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator

from service import contracts
from service.clock import utcnow
from service.localnet import LocalNode, build_network
from service.main import create_app
from service.people.schemas import today as china_today
from service.signing.http import verify_response
from service.signing.keys import public_key_from_text
from service.signing.node import NodeSigner
from tests.conftest import FAST, free_ports

PROBLEM = "application/problem+json"
PROBLEM_CONTENT = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
METHODS = ("get", "put", "post", "patch", "delete")
VALID_ID = "411627199503080024"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return contracts.openapi_document()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = document["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def subschemas(document: dict[str, Any], node: Any, seen: set[int] | None = None) -> Iterator[dict[str, Any]]:
    """Every schema inside ``node``, references followed (once each)."""
    seen = set() if seen is None else seen
    node = resolve(document, node)
    if not isinstance(node, dict) or id(node) in seen:
        return
    seen.add(id(node))
    yield node
    for key, value in node.items():
        children = value.values() if key in ("properties", "$defs") else [value]
        for child in children:
            for item in child if isinstance(child, list) else [child]:
                if isinstance(item, dict):
                    yield from subschemas(document, item, seen)


def request_schemas(operation: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, schema) of every parameter and request body an operation takes."""
    for parameter in operation.get("parameters", []):
        yield f"{parameter['in']} {parameter['name']}", parameter["schema"]
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        yield f"body ({media_type})", content.get("schema", {})


# --- the document ----------------------------------------------------------------------------------


def test_every_validation_error_is_documented_as_the_problem_it_is(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert "ValidationError" not in components
    for method, path, operation in operations(document):
        takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
        responses = operation["responses"]
        assert ("422" in responses) == takes_input, (method, path)
        for status, response in responses.items():
            if status.startswith("4") or (status.startswith("5") and path.startswith(("/api/", "/peer/"))):
                assert response["content"] == PROBLEM_CONTENT, (method, path, status)


def test_staff_operations_document_authentication_and_roles(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        if path.startswith("/api/v1/"):
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
    requeue = document["paths"]["/api/v1/outbox/{message_id}/requeue"]["post"]
    assert {"404", "409", "422"} <= set(requeue["responses"])


def test_every_integer_a_client_sends_is_bounded(document: dict[str, Any]) -> None:
    unbounded = [
        (method, path, where, schema.get("title"))
        for method, path, operation in operations(document)
        for where, top in request_schemas(operation)
        for schema in subschemas(document, top)
        if schema.get("type") == "integer" and ("minimum" not in schema or "maximum" not in schema)
    ]
    assert unbounded == []


def test_ids_in_paths_queries_and_bodies_are_database_ids(document: dict[str, Any]) -> None:
    ids = [
        schema
        for _method, path, operation in operations(document)
        if path.startswith("/api/v1/")
        for where, top in request_schemas(operation)
        if where.endswith("_id") or where.startswith("body")
        for schema in subschemas(document, top)
        if schema.get("type") == "integer" and "id" in str(schema.get("title", "")).lower().split()
    ]
    assert len(ids) >= 15
    assert {(s["minimum"], s["maximum"]) for s in ids} == {(1, 2**31 - 1)}


def test_rules_a_client_can_check_first_are_in_the_schema(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]

    def valid(schema: dict[str, Any], value: Any) -> bool:
        return Draft202012Validator({**schema, "components": components}).is_valid(value)

    id_number = components["Subject"]["properties"]["id_number"]
    assert id_number["format"] == "gb11643"
    for good in (VALID_ID, "11010519491231002X", "11010519491231002x"):
        assert valid(id_number, good), good
    for bad in ("011627199503080024", "411627199513080024", "411627199503320024", "41162719950308002Y"):
        assert not valid(id_number, bad), bad
    name = components["Subject"]["properties"]["name"]
    for good in ("王秀英", "line\nand\ttab"):
        assert valid(name, good), good
    for bad in ("王\x00", "a\x1fb", "\x7f", "a\rb"):
        assert not valid(name, bad), repr(bad)
    question = components["VerificationRequestCreate"]["properties"]["question"]
    assert not valid(question, "请核实\x00")
    (month,) = document["paths"]["/api/v1/reports/{month}"]["get"]["parameters"]
    for good in ("2000-01", "2026-10", "2100-12"):
        assert valid(month["schema"], good), good
    for bad in ("2026-13", "2026-00", "1999-12", "2101-01", "2026-1", "٢٠٢٦-١٠"):
        assert not valid(month["schema"], bad), bad


def test_problem_codes_cover_what_the_framework_answers() -> None:
    codes = set(contracts.message_schemas()["problem.json"]["properties"]["code"]["enum"])
    assert {"not_found", "method_not_allowed", "validation_failed", "internal_error"} <= codes


# --- a real node -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    (jinshui,) = build_network(tmp_path_factory.mktemp("truth"), [("410105", "金水区")], free_ports(1), FAST)
    jinshui.start()
    yield jinshui
    jinshui.stop()


def concrete(path: str) -> str:
    """A path of the document with plausible values for its parameters."""
    values = {"month": "2026-10", "message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10"}
    return re.sub(
        r"\{(\w+)\}",
        lambda m: values.get(m[1], "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11" if "request" in m[1] else "1"),
        path,
    )


def test_undeclared_methods_answer_405_with_every_declared_one(
    node: LocalNode, document: dict[str, Any]
) -> None:
    for path, item in document["paths"].items():
        declared = {m.upper() for m in item}
        for method in METHODS:
            if method.upper() in declared:
                continue
            response = node.api(method.upper(), concrete(path), admin=True)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["code"] == "method_not_allowed"
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == declared, (method, path, allowed)


def test_literal_paths_beside_an_id_are_not_taken_for_ids(node: LocalNode) -> None:
    for method, path, allowed in (
        ("GET", "/api/v1/certificates/lookup", "POST"),
        ("PATCH", "/api/v1/certificates/checks", "GET"),
        ("GET", "/api/v1/people/import", "POST"),
        ("DELETE", "/api/v1/people/1", "GET, PATCH"),
        ("OPTIONS", "/api/v1/people", "GET, POST"),
    ):
        response = node.api(method, path, admin=True)
        assert (response.status_code, response.headers.get("allow")) == (405, allowed), (method, path)
    assert node.api("GET", "/api/v1/people/not-a-number", admin=True).status_code == 404


def test_the_node_refuses_what_the_month_pattern_refuses(node: LocalNode) -> None:
    last_month = f"{china_today().replace(day=1) - timedelta(days=1):%Y-%m}"  # the nodes' clock
    assert node.api("GET", f"/api/v1/reports/{last_month}", admin=True).status_code == 200
    for month in ("2026-13", "٢٠٢٦-٠٥", "2026-05%0A", "2026-5", "1999-12"):
        problem = node.api("GET", f"/api/v1/reports/{month}", admin=True)
        assert problem.status_code == 422, month
        assert [e["field"] for e in problem.json()["errors"]] == ["month"]


def test_an_unreadable_body_is_the_documented_422(node: LocalNode, document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        content = operation.get("requestBody", {}).get("content", {})
        if not path.startswith("/api/v1/") or "application/json" not in content:
            continue
        assert "422" in operation["responses"]
        for body in (b'{"name": "\x80"}', b'{"name": ', b"\xff\xfe{}"):
            response = raw(node, method, concrete(path), body, "application/json")
            assert response.status_code == 422, (method, path, body, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["code"] == "validation_failed"
    garbage = raw(node, "POST", "/api/v1/people/import", b"not multipart", "multipart/form-data; boundary=x")
    assert (garbage.status_code, garbage.json()["code"]) == (422, "validation_failed")


def raw(node: LocalNode, method: str, path: str, body: bytes, content_type: str) -> httpx.Response:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {node.admin_token}"}
    return httpx.request(method.upper(), node.url + path, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/peer/v1/no-such-endpoint", 404),
        ("GET", "/peer/v1/nothing/here", 404),
        ("GET", "/peer/v1/verification-requests", 405),
        ("PUT", "/peer/v1/node", 405),
        ("DELETE", "/peer/v1/certificate-lookups", 405),
    ],
)
def test_every_peer_answer_is_signed_unknown_paths_and_methods_too(
    node: LocalNode, method: str, path: str, status: int
) -> None:
    keyid, public_key = node.public_key.split("=", 1)
    response = httpx.request(method, node.url + path, content=b"{}", timeout=30)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    verify_response(
        status=response.status_code,
        headers=response.headers.multi_items(),
        body=response.content,
        resolve_key=lambda k: public_key_from_text(public_key) if k == keyid else None,
        expected_node=node.node_id,
        now=utcnow(),
    )
    # Outside /peer/v1 nothing is signed: staff answers are not peer evidence.
    assert "signature" not in node.api(method, "/api/v1/nothing").headers


def test_the_served_contract_is_the_published_one(node: LocalNode, document: dict[str, Any]) -> None:
    served = httpx.get(f"{node.url}/openapi.json", timeout=30).json()
    assert served == json.loads(contracts.render(document))


# --- a bug -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/broken", "/peer/v1/broken"])
def test_a_bug_is_a_problem_without_its_trace_signed_under_peer(path: str) -> None:
    app = create_app()
    key = Ed25519PrivateKey.generate()
    app.state.signer = NodeSigner(node_id="410105", name="金水区", keyid="410105/k1", private_key=key)

    @app.get(path)
    def broken() -> None:
        raise RuntimeError("secret detail 411627199503080024")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as client:
            return await client.get(path)

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "internal_error"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert ("signature" in response.headers) == path.startswith("/peer/v1/")
    if path.startswith("/peer/v1/"):
        verify_response(
            status=500,
            headers=response.headers.multi_items(),
            body=response.content,
            resolve_key=lambda k: key.public_key() if k == "410105/k1" else None,
            expected_node="410105",
            now=utcnow(),
        )
