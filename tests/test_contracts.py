"""The committed contracts (openapi/, schemas/) are what the code generates, and they say what peers send."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from service import contracts
from service.cli import app
from service.errors import InvalidMessage, UnknownRequest
from service.exchange.routes import envelope_schema_name
from service.main import PEER_ENDPOINTS
from tests import vectors

ROOT = Path(__file__).resolve().parents[1]


def load(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / relative).read_text(encoding="utf-8"))
    return data


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load(f"schemas/{name}"))


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return vectors.load()  # tests/vectors/, made by tests/vectors/generate.py


# --- the committed files are the generated ones ---------------------------------------------------


def test_committed_contracts_match_the_code() -> None:
    drifted = contracts.drifted(ROOT)
    assert drifted == [], f"contracts drifted from the code: {drifted}; run `yipanqi contracts` and commit"


def test_generation_is_deterministic() -> None:
    first, second = contracts.generate(), contracts.generate()
    assert first == second
    for path, text in first.items():
        assert text.endswith("}\n"), path
        assert text == contracts.render(json.loads(text)), f"{path} is not in canonical form"


def test_one_schema_per_peer_message_type_plus_receipt_and_problem() -> None:
    expected = {f"{e.message_type}.json" for e in PEER_ENDPOINTS} | {"receipt.json", "problem.json"}
    expected |= {"batch.request.json", "batch.response.json"}
    assert {"verification.request.json", "verification.ack.json", "verification.reply.json"} <= expected
    assert {p.name for p in (ROOT / "schemas").glob("*.json")} == expected


# --- openapi.json ------------------------------------------------------------------------------------


def test_openapi_carries_every_envelope_as_the_peer_request_body() -> None:
    document = load("openapi/openapi.json")
    assert document["openapi"].startswith("3.")
    components = document["components"]["schemas"]
    for endpoint in PEER_ENDPOINTS:
        name = envelope_schema_name(endpoint)
        assert name in components, name
        operation = document["paths"][f"/peer/v1{endpoint.path}"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}
        if endpoint.synchronous:  # answered at once (a certificate lookup): the answer, not a receipt
            assert endpoint.response_model is not None
            assert "202" not in operation["responses"]
            assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{endpoint.response_model.__name__}"
            }
            continue
        assert operation["responses"]["202"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Receipt"
        }


def test_openapi_references_all_resolve_and_schemas_are_valid() -> None:
    document = load("openapi/openapi.json")
    for ref in sorted(refs(document)):
        resolve(document, ref)  # KeyError names the dangling reference
    for name, schema in document["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # name the component that is not a JSON Schema
            raise AssertionError(f"components.schemas.{name}: {exc}") from exc


def test_openapi_envelope_accepts_the_worked_example(vector: dict[str, Any]) -> None:
    document = load("openapi/openapi.json")
    # A root that carries the components, so "#/components/schemas/..." resolves as in the document.
    schema = {
        "$ref": "#/components/schemas/Envelope_verification_request",
        "components": document["components"],
    }
    Draft202012Validator(schema).validate(json.loads(vector["request"]["body"]))


# --- schemas/ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "schemas").glob("*.json")), ids=lambda p: p.name)
def test_schema_files_are_json_schema_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for ref in refs(schema):
        resolve(schema, ref)


def test_request_schema_accepts_the_worked_example(vector: dict[str, Any]) -> None:
    envelope = json.loads(vector["request"]["body"])
    validator("verification.request.json").validate(envelope)


def test_request_schema_refuses_what_the_inbox_refuses(vector: dict[str, Any]) -> None:
    envelope = json.loads(vector["request"]["body"])
    check = validator("verification.request.json")
    assert not check.is_valid({**envelope, "type": "verification.reply"})
    assert not check.is_valid({**envelope, "extra": 1})
    assert not check.is_valid({**envelope, "sender": "010105"})
    assert not check.is_valid({**envelope, "payload": {**envelope["payload"], "topic": "weather"}})
    no_question = {k: v for k, v in envelope["payload"].items() if k != "question"}
    assert not check.is_valid({**envelope, "payload": no_question})


def test_ack_and_reply_schemas_accept_answers(vector: dict[str, Any]) -> None:
    request = json.loads(vector["request"]["body"])
    base = {
        "message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11",
        "sender": request["recipient"],
        "recipient": request["sender"],
        "sent_at": "2026-11-23T10:00:00+08:00",
        "correlation_id": request["message_id"],
    }
    ack = {**base, "type": "verification.ack", "payload": {"acknowledged_at": "2026-11-23T10:00:00+08:00"}}
    validator("verification.ack.json").validate(ack)
    reply = {
        **base,
        "type": "verification.reply",
        "payload": {
            "outcome": "confirmed",
            "findings": "已婚，一孩，信息一致。",
            "answered_at": "2026-11-24T02:00:00Z",
        },
    }
    validator("verification.reply.json").validate(reply)
    assert not validator("verification.reply.json").is_valid(
        {**reply, "payload": {**reply["payload"], "outcome": "maybe"}}
    )
    assert not validator("verification.ack.json").is_valid(reply)


def test_receipt_schema_accepts_the_worked_example(vector: dict[str, Any]) -> None:
    receipt = json.loads(vector["response"]["body"])
    validator("receipt.json").validate(receipt)
    assert not validator("receipt.json").is_valid({**receipt, "status": "maybe"})


def test_problem_schema_accepts_the_errors_the_node_renders() -> None:
    check = validator("problem.json")
    check.validate(UnknownRequest("no such request").problem())
    check.validate(
        InvalidMessage("does not validate", errors=[{"field": "payload.topic", "reason": "bad"}]).problem()
    )
    assert not check.is_valid({**UnknownRequest("x").problem(), "code": "no_such_code"})


# --- the command -------------------------------------------------------------------------------------


def test_contracts_command_writes_then_check_passes(tmp_path: Path) -> None:
    runner = CliRunner()
    written = runner.invoke(app, ["contracts", "--root", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert (tmp_path / "openapi" / "openapi.json").is_file()
    checked = runner.invoke(app, ["contracts", "--check", "--root", str(tmp_path)])
    assert checked.exit_code == 0, checked.output


def test_contracts_check_names_the_drifted_files(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["contracts", "--root", str(tmp_path)]).exit_code == 0
    (tmp_path / "schemas" / "receipt.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "schemas" / "verification.ack.json").unlink()
    (tmp_path / "schemas" / "notification.old.json").write_text("{}\n", encoding="utf-8")
    result = runner.invoke(app, ["contracts", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "schemas/receipt.json (differs)" in result.output
    assert "schemas/verification.ack.json (missing)" in result.output
    assert "schemas/notification.old.json (no longer generated)" in result.output
    assert "openapi.json" not in result.output
    # Writing repairs all three, removing the stale file.
    assert runner.invoke(app, ["contracts", "--root", str(tmp_path)]).exit_code == 0
    assert not (tmp_path / "schemas" / "notification.old.json").exists()
    assert runner.invoke(app, ["contracts", "--check", "--root", str(tmp_path)]).exit_code == 0


# --- the repository stands alone ----------------------------------------------------------------------

# Generated or installed, never committed (.gitignore): not the repository's own text.
NOT_OURS = {".git", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv"}
# A path into the design or domain folder beside the checkout, written out or joined as a Path.
# ("shar[e]d" so that this file does not match itself.)
OUTSIDE = re.compile(
    rb"\.\./shar[e]d\b"
    rb"|shar[e]d[/\\](?:design|domain)\b"
    rb"""|["']shar[e]d["']\s*[/,]\s*["'](?:design|domain)["']"""
    rb"""|\.parents?(?:\[\d+\])?\s*/\s*["']shar[e]d["']"""
)


def repository_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_OURS and not d.endswith(".egg-info")]
        found += [Path(folder, name) for name in files]
    return found


def test_the_pattern_finds_what_it_must() -> None:
    s = "shar" + "ed"
    for text in (
        f"../{s}/design/vectors/verification-request.json",
        f"the design folder ({s}/design)",
        f"{s}\\domain\\DOMAIN.md",
        f'ROOT.parent / "{s}" / "design" / "vectors"',
        f"os.path.join('..', '{s}', 'domain')",
        f'ROOT.parent / "{s}"',
        f'Path(__file__).resolve().parents[2] / "{s}" / name',
    ):
        assert OUTSIDE.search(text.encode()), text
    for text in ("a shared database", "shared by the CLI and the API", f"with {s}/ beside it"):
        assert not OUTSIDE.search(text.encode()), text


def test_no_file_refers_to_folders_outside_the_repository() -> None:
    """Protocol, domain notes and vectors are in docs/ and tests/vectors/: nothing reads beside the clone."""
    files = repository_files()
    assert ROOT / "docs" / "protocol.md" in files
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_bytes().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == [], f"these lines point outside the repository: {offenders}"


def test_readme_points_to_the_docs_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/protocol.md", "docs/domain.md"):
        assert f"`{doc}`" in readme, doc
        assert (ROOT / doc).is_file(), doc
    assert "PROTOCOL.md" not in readme
    assert "DOMAIN.md" not in readme
