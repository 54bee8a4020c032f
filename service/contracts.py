"""The published contracts, generated from the code: ``openapi/openapi.json`` and ``schemas/*.json``.

Other counties' systems may not be written in Python (docs/protocol.md): these files are what they
build against, so they are committed, and ``yipanqi contracts --check`` (and a test) fails when
the code and the committed files disagree. The output is deterministic — sorted keys, indent 2,
UTF-8 as is, a trailing newline — so a change to the contract shows up as a readable diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from service.errors import DomainError, Problem
from service.exchange.envelope import Receipt

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
OPENAPI_FILE = Path("openapi") / "openapi.json"
SCHEMAS_DIR = Path("schemas")


def render(document: Any) -> str:
    """The one byte form of every generated file."""
    return json.dumps(document, ensure_ascii=False, sort_keys=True, indent=2) + "\n"


def openapi_document() -> dict[str, Any]:
    """``create_app().openapi()``; the app is only built, its lifespan (database, key, relay) never runs."""
    from service.main import create_app

    return create_app().openapi()


def _error_codes() -> list[str]:
    import service.main  # noqa: F401  (imports every module that defines an error)

    codes: set[str] = set()
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    codes.discard(DomainError.code)  # the abstract base's placeholder
    return sorted(codes)


def _standalone(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.update({"$schema": JSON_SCHEMA_DIALECT, "title": title, "description": description})
    return schema


def message_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, one per peer message type, plus the receipt and the problem."""
    from service.exchange import batch
    from service.main import PEER_ENDPOINTS

    schemas: dict[str, dict[str, Any]] = {}
    for endpoint in PEER_ENDPOINTS:
        description = f"The envelope POSTed to /peer/v1{endpoint.path}"
        if endpoint.summary:
            description += f" ({endpoint.summary})"
        schema = _standalone(endpoint.envelope_model(), endpoint.message_type, description + ".")
        # The inbox refuses any other type on this endpoint (invalid_message): say so here.
        schema["properties"]["type"]["const"] = endpoint.message_type
        if endpoint.correlated:
            schema["properties"]["correlation_id"]["description"] = (
                "the message_id of the request this answers; must equal {request_id} in the path"
            )
        schemas[f"{endpoint.message_type}.json"] = schema
    schemas["receipt.json"] = _standalone(
        Receipt,
        "receipt",
        "The signed answer (202 accepted, 200 duplicate) to every asynchronous peer message.",
    )
    problem = _standalone(
        Problem, "problem", "application/problem+json (RFC 9457): every error answer, peer and staff API."
    )
    problem["properties"]["code"]["enum"] = _error_codes()
    schemas["problem.json"] = problem
    schemas.update(batch.standalone_schemas(PEER_ENDPOINTS, JSON_SCHEMA_DIALECT))
    return schemas


def generate() -> dict[Path, str]:
    """Every generated file: path relative to the project root → its exact text."""
    files = {OPENAPI_FILE: render(openapi_document())}
    for name, schema in message_schemas().items():
        files[SCHEMAS_DIR / name] = render(schema)
    return files


def _stale(root: Path, files: dict[Path, str]) -> list[Path]:
    """Files in schemas/ that the code no longer generates (a message type was removed or renamed)."""
    folder = root / SCHEMAS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(root) for p in folder.glob("*.json") if p.relative_to(root) not in files)


def drifted(root: Path) -> list[str]:
    """Generated files that are missing, different or stale under ``root``, as relative paths."""
    files = generate()
    problems = []
    for path, text in sorted(files.items()):
        target = root / path
        if not target.is_file():
            problems.append(f"{path} (missing)")
        elif target.read_bytes() != text.encode("utf-8"):
            problems.append(f"{path} (differs)")
    problems.extend(f"{path} (no longer generated)" for path in _stale(root, files))
    return problems


def write(root: Path) -> list[Path]:
    """Write every generated file under ``root``, remove stale schemas; return what changed."""
    files = generate()
    changed = []
    for path, text in sorted(files.items()):
        target = root / path
        if target.is_file() and target.read_bytes() == text.encode("utf-8"):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))  # bytes: no newline translation on any OS
        changed.append(path)
    for path in _stale(root, files):
        (root / path).unlink()
        changed.append(path)
    return changed


def default_root() -> Path:
    """The checkout this package was installed from (editable install), else the current folder."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
