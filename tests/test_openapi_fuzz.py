"""Property-based contract test: schemathesis drives every operation of the node's served OpenAPI.

Two real nodes on 127.0.0.1 (SQLite): 金水区 under test and 太康县, its trusted peer and the
origin its certificate look-ups go to. Staff operations are called with an admin token (admin
may do everything); peer operations are signed with 太康县's key, the way
``service/exchange/client.py`` signs a delivery. A case fails on a 5xx and on any answer the
contract does not describe: an undocumented status code, another content type, a body that does
not match its schema, a 405 without ``Allow``. ``YIPANQI_TEST_FUZZ_EXAMPLES`` sets the number of
generated examples per operation (fuzzing phase; default 50); the examples and coverage phases
add their own, bounded by the schema. ``YIPANQI_TEST_FUZZ_SEED`` picks other examples.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

from service import idnumbers
from service.clock import utcnow
from service.localnet import LocalNode, build_network, wait_for
from service.people.schemas import today as china_today
from service.signing.http import sign_request
from service.signing.keys import read_private_key
from tests.conftest import FAST, free_ports

EXAMPLES = int(os.environ.get("YIPANQI_TEST_FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("YIPANQI_TEST_FUZZ_SEED", "20261201"))  # another seed, other examples
HOST, PEER = ("410105", "金水区"), ("411627", "太康县")
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.unsupported_method,
    checks.ignored_auth,
    checks.missing_required_header,
    checks.allow_header_conformance,
]


@dataclass
class Target:
    host: LocalNode
    peer: LocalNode
    peer_key: Ed25519PrivateKey
    http: requests.Session = field(default_factory=requests.Session)
    calls: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def count(self, status: int) -> None:
        self.calls += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def id_numbers() -> st.SearchStrategy[str]:
    """Valid 居民身份证号, mostly of the two nodes' counties (so look-ups reach a known origin)."""
    region = st.sampled_from([HOST[0], PEER[0], "110101", "310110"])
    born = st.dates(date(1950, 1, 1), date(2025, 12, 31))
    order = st.integers(0, 999)

    def number(region: str, born: date, order: int) -> str:
        first17 = f"{region}{born:%Y%m%d}{order:03d}"
        return first17 + idnumbers.check_character(first17)

    return st.builds(number, region, born, order)


def coherent(node: Any) -> Any:
    """A subject's birth date and sex as its ID number says (a rule across fields no schema can state)."""
    if isinstance(node, dict):
        number = node.get("id_number")
        if isinstance(number, str) and "birth_date" in node and "sex" in node:
            try:
                node["birth_date"] = idnumbers.birth_date(idnumbers.validate(number)).isoformat()
                node["sex"] = idnumbers.sex(number)
            except ValueError:
                pass
        for value in node.values():
            coherent(value)
    elif isinstance(node, list):
        for value in node:
            coherent(value)
    return node


def created(node: LocalNode, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = node.api("POST", path, json=body)
    assert response.status_code in (200, 201), (path, response.text)
    answer: dict[str, Any] = response.json()
    return answer


def seed(host: LocalNode, peer: LocalNode) -> None:
    """A few records of every kind, so generated small ids find something (a 200 with its body)."""
    today = china_today()  # the test session's clock, which the nodes share (tests/conftest.py)
    born = today.replace(year=today.year - 30, day=1)

    def someone(county: str, serial: int, sex: str = "F", **extra: Any) -> dict[str, Any]:
        first17 = f"{county}{born:%Y%m%d}{2 * serial + (sex == 'M'):03d}"
        number = first17 + idnumbers.check_character(first17)
        fields = {"name": "王秀英" if sex == "F" else "李建国", "sex": sex, "birth_date": born.isoformat()}
        return {"id_number": number, **fields, "host_node": HOST[0], **extra}

    subject = {k: v for k, v in someone(PEER[0], 1).items() if k != "host_node"}
    arrived = {"arrived_on": today.replace(day=1).isoformat()}
    mother = created(host, "/api/v1/people", someone(PEER[0], 1, marital_status="first_marriage", **arrived))
    created(host, "/api/v1/people", someone(PEER[0], 2, sex="M", **arrived))
    created(host, "/api/v1/people", someone(HOST[0], 3, marital_status="first_marriage"))  # her origin: here
    child = {"birth_date": today.isoformat(), "sex": "F"}
    body = {"person_id": mother["id"], "child": child, "commitment_signed_on": today.isoformat()}
    created(host, "/api/v1/births", body)
    # Her arrival's 通报 (sent when she was registered here) gives the host standing at her origin.
    arrivals = "/api/v1/notifications?direction=incoming&kind=arrival"
    wait_for(lambda: peer.api("GET", arrivals).json()["total"])
    created(host, "/api/v1/certificates/lookup", {k: subject[k] for k in ("id_number", "name")})
    question = {"topic": "marital_status", "subject": subject, "question": "请核实该对象婚育情况。"}
    created(host, "/api/v1/verification-requests", {"recipient": PEER[0], **question})
    created(peer, "/api/v1/verification-requests", {"recipient": HOST[0], **question})
    kind = {"kind": "arrival", "occurred_on": today.isoformat(), "details": {"arrived_on": today.isoformat()}}
    created(peer, "/api/v1/notifications", {"recipient": HOST[0], "subject": subject, **kind})
    wait_for(lambda: host.api("GET", "/api/v1/notifications?direction=incoming").json()["total"])
    wait_for(lambda: host.api("GET", "/api/v1/verification-requests?direction=incoming").json()["total"])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    host, peer = build_network(root, [HOST, PEER], free_ports(2), FAST)
    schemathesis.openapi.format("gb11643", id_numbers())
    try:
        host.start()
        peer.start()
        seed(host, peer)
        found = Target(host, peer, read_private_key(peer.data_dir / "keys" / "k1.pem"))
        yield found
        seconds = time.monotonic() - found.started
        statuses = sorted(found.statuses.items())
        print(f"\nfuzz: {found.calls} requests in {seconds:.0f} s; by status {statuses}")
    finally:
        from schemathesis.specs.openapi.formats import unregister_string_format

        unregister_string_format("gb11643")
        host.stop()
        peer.stop()


def inline_kind_rules(document: dict[str, Any]) -> dict[str, Any]:
    """The same contract, each ``if kind … then details`` rule's ``$ref`` written out in place.

    Schemathesis cannot generate from the notification payload's seven if/then rules while their
    ``details`` are references (it reports the schema as unsupported); written out, it can.
    """
    components = document["components"]["schemas"]
    for component in components.values():
        for rule in component.get("allOf", []):
            details = rule.get("then", {}).get("properties", {}).get("details", {})
            if "$ref" in details:
                details.update(copy.deepcopy(components[details.pop("$ref").rsplit("/", 1)[1]]))
    return document


@pytest.fixture(scope="module")
def api_schema(target: Target) -> OpenApiSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": target.host.url,
            "seed": SEED,
            "generation": {"max-examples": EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "warnings": False,
        }
    )
    served = target.http.get(f"{target.host.url}/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(inline_kind_rules(served), config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def signed_call(case: Case, target: Target) -> requests.Response:
    """POST the case's body signed by the peer, as a relay delivery is (service/exchange/client.py)."""
    kwargs = case.as_transport_kwargs(base_url=target.host.url)
    body = kwargs.pop("json", None)
    if "data" in kwargs:
        raw = kwargs.pop("data")
        content = raw.encode() if isinstance(raw, str) else bytes(raw)
    else:
        content = json.dumps(body, ensure_ascii=False).encode()
    headers = {k: v for k, v in kwargs.pop("headers", {}).items() if k.lower() != "content-type"}
    headers |= sign_request(
        method=case.method.upper(),
        path=urlsplit(kwargs["url"]).path,
        body=content,
        key=target.peer_key,
        keyid=f"{PEER[0]}/k1",
        created=utcnow(),
        lifetime=timedelta(seconds=300),
    )
    return target.http.request(data=content, headers=headers, timeout=30, **kwargs)


def plausible_envelope(case: Case) -> None:
    """Address a positive case's envelope from the peer to the node, so the payload is what is tested."""
    envelope = case.body
    if not isinstance(envelope, dict):
        return
    endpoint = case.operation.definition.raw.get("operationId", "")
    envelope.update(sender=PEER[0], recipient=HOST[0], type=endpoint.replace("_", "."))
    if case.path_parameters:
        (envelope["correlation_id"],) = case.path_parameters.values()


@schema.parametrize()
def test_every_answer_is_one_the_contract_describes(case: Case, target: Target) -> None:
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if positive:
        coherent(case.body)
    if case.path.startswith("/peer/v1/") and case.method.upper() == "POST":
        if positive:
            plausible_envelope(case)
        response = signed_call(case, target)
    else:
        headers = {"Authorization": f"Bearer {target.host.admin_token}"}
        response = case.call(headers=headers, session=target.http)
    target.count(response.status_code)
    case.validate_response(response, checks=CHECKS)
