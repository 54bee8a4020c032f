"""Batch exchange, ``POST /peer/v1/batch`` (docs/protocol.md section 18): many asynchronous
messages in one signed request, each answered as the single endpoint would answer it alone.

The wire format, both ways:

- request ``{"items": ["<envelope>", …]}``: each item is one message's body, byte for byte the
  body its single endpoint would get, carried as a JSON *string* (so the receiver gets back the
  exact bytes, and with them the same ``Content-Digest``, whatever JSON writer the sender uses);
- response ``{"results": [{"message_id", "status", "body", "signature_input", "signature"}, …]}``,
  one per item in order: the status and body of the answer the single endpoint would have given
  (a receipt or a problem document, again as a string) and that answer's own RFC 9421 signature
  (``"@status" "content-type" "content-digest"``), so that each receipt is evidence on its own,
  exactly like a single receipt, once separated from the batch.

Both the receiver (per item) and the sender (per item) sign and verify thousands of these a
second, so the response signature of an item is made here directly (the same bytes as
``service.signing.http.sign_response``; tests check that), and verified here directly when its
``Signature-Input`` has the one form yipanqi writes (anything else goes through the library).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from service.errors import (
    PROBLEM_JSON,
    DomainError,
    InvalidMessage,
    PayloadTooLarge,
    Problem,
)
from service.exchange.envelope import Receipt, canonical_json
from service.exchange.inbox import (
    Accepted,
    CheckedItem,
    PeerEndpoint,
    check_addressing,
    load_json,
    validate_envelope,
)
from service.signing.http import (
    RequestBinding,
    VerifiedSignature,
    content_digest,
    sign_response,
    verify_response,
)

PATH = "/batch"  # below /peer/v1
CAPABILITY = "batch"  # in GET /peer/v1/node "capabilities"
MAX_ITEMS = 1000  # the protocol's limit; a node may advertise fewer
JSON = "application/json"
_ITEMS_OPEN, _ITEMS_CLOSE = b'{"items":[', b"]}"


# --- the contract (the route reads the raw body; these models are for the published schemas) ------


def _envelope_refs(message_types: Sequence[str], ref: Callable[[str], str]) -> dict[str, Any]:
    return {"oneOf": [{"$ref": ref(t)} for t in message_types]}


def request_schema(message_types: Sequence[str], ref: Callable[[str], str]) -> dict[str, Any]:
    """JSON Schema of the batch request; ``ref(message_type)`` names each envelope's schema."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_ITEMS,
                "description": (
                    "The messages, each the exact body its single endpoint would receive (an envelope of"
                    " an asynchronous type), as a JSON string: its UTF-8 bytes are what Content-Digest"
                    " and the receipt's digest are taken of. At most the max_items the receiver"
                    " advertises (GET /peer/v1/node), and the whole body at most its max_body_bytes."
                ),
                "items": {
                    "type": "string",
                    "contentMediaType": JSON,
                    "contentSchema": _envelope_refs(message_types, ref),
                },
            }
        },
    }


class BatchResult(BaseModel):
    """The answer to one item: what its single endpoint would have answered, signed as such."""

    model_config = ConfigDict(extra="forbid")

    message_id: UUID | None = Field(
        description="the item's message_id; null when the item did not carry a readable one"
    )
    status: int = Field(
        ge=200,
        le=599,
        description="202 accepted, 200 duplicate, or the error status the single endpoint would give",
    )
    body: str = Field(
        description=(
            "the answer's exact body as a string: a receipt (status 200/202, Content-Type application/json)"
            " or a problem document (any other status, application/problem+json)"
        ),
        json_schema_extra={
            "contentMediaType": JSON,
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Receipt"},
                    {"$ref": "#/components/schemas/Problem"},
                ]
            },
        },
    )
    signature_input: str = Field(
        description='Signature-Input of the answer alone: yp=("@status" "content-type" "content-digest");…'
    )
    signature: str = Field(description="Signature of the answer alone: yp=:<base64>:")


class BatchResponse(BaseModel):
    """The signed 200 answer to a batch: one result per item, in the items' order."""

    model_config = ConfigDict(extra="forbid")

    results: list[BatchResult]


class BatchInfo(BaseModel):
    """What GET /peer/v1/node says of the batch endpoint (present when "batch" is a capability)."""

    path: str = "/peer/v1" + PATH
    max_items: int = Field(ge=1, le=MAX_ITEMS)
    max_body_bytes: int = Field(ge=1)


def standalone_schemas(endpoints: Sequence[PeerEndpoint], dialect: str) -> dict[str, dict[str, Any]]:
    """``schemas/batch.request.json`` and ``schemas/batch.response.json``, each self-contained (the
    models its strings hold are in its own ``$defs``, as every file of schemas/ is)."""
    asynchronous = [e for e in endpoints if not e.synchronous]
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (e.envelope_model(), "validation") for e in asynchronous
    ]
    keys, generated = models_json_schema(models, ref_template="#/$defs/{model}")
    # Each envelope under the name the OpenAPI document gives it (Envelope_verification_ack, …).
    text = json.dumps(generated["$defs"])
    envelopes: dict[str, str] = {}
    for endpoint in asynchronous:
        generated_ref = keys[(endpoint.envelope_model(), "validation")]["$ref"]
        envelopes[endpoint.message_type] = "#/$defs/Envelope_" + endpoint.message_type.replace(".", "_")
        text = text.replace(f'"{generated_ref}"', f'"{envelopes[endpoint.message_type]}"')
    defs = json.loads(text)
    for endpoint in asynchronous:
        generated_name = keys[(endpoint.envelope_model(), "validation")]["$ref"].removeprefix("#/$defs/")
        envelope = defs.pop(generated_name)
        envelope["properties"]["type"]["const"] = endpoint.message_type  # the inbox refuses any other
        defs[envelopes[endpoint.message_type].removeprefix("#/$defs/")] = envelope
    request = request_schema([e.message_type for e in asynchronous], envelopes.__getitem__)
    request.update(
        {
            "$schema": dialect,
            "title": "batch request",
            "description": "The body POSTed to /peer/v1/batch (docs/protocol.md section 18).",
            "$defs": defs,
        }
    )
    answers: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (BatchResponse, "validation"),
        (Receipt, "validation"),
        (Problem, "validation"),
    ]
    # BatchResult names Receipt and Problem as the OpenAPI document has them; here, in $defs.
    _keys, generated = models_json_schema(answers, ref_template="#/components/schemas/{model}")
    text = json.dumps(generated["$defs"]).replace("#/components/schemas/", "#/$defs/")
    defs = json.loads(text)
    response = {**defs.pop("BatchResponse"), "$defs": defs}
    response.update(
        {
            "$schema": dialect,
            "title": "batch response",
            "description": "The signed 200 answer to POST /peer/v1/batch: one result per item, in order.",
        }
    )
    return {"batch.request.json": request, "batch.response.json": response}


# --- one item's answer, signed on its own -----------------------------------------------------------


def content_type_of(status: int) -> str:
    return JSON if status in (200, 202) else PROBLEM_JSON


def sign_item(
    status: int,
    body: bytes,
    *,
    key: Ed25519PrivateKey,
    keyid: str,
    created: datetime,
    request: RequestBinding | None = None,
) -> tuple[str, str]:
    """(Signature-Input, Signature) of a response ``status`` with ``body``: what ``sign_response``
    writes for it as a whole response; bound, like the batch's answer, to the batch request."""
    headers = sign_response(
        status=status,
        body=body,
        key=key,
        keyid=keyid,
        created=created,
        content_type=content_type_of(status),
        request=request,
    )
    return headers["Signature-Input"], headers["Signature"]


def verify_item(
    status: int,
    body: bytes,
    signature_input: str,
    signature: str,
    *,
    resolve_key: Callable[[str], Ed25519PublicKey | None],
    expected_node: str,
    now: datetime,
    skew_seconds: int,
    request: RequestBinding | None = None,
) -> VerifiedSignature:
    """Check one item's answer as ``verify_response`` checks a whole response (the same DomainErrors);
    ``request``: the batch request it must be bound to (the sender always gives it)."""
    return verify_response(
        status=status,
        headers=[
            ("Content-Type", content_type_of(status)),
            ("Content-Digest", content_digest(body)),
            ("Signature-Input", signature_input),
            ("Signature", signature),
        ],
        body=body,
        resolve_key=resolve_key,
        expected_node=expected_node,
        now=now,
        skew_seconds=skew_seconds,
        request=request,
    )


# --- the receiver ----------------------------------------------------------------------------------


def read_items(body: bytes, max_items: int) -> list[str]:
    """The batch's items (strings), or the whole batch refused: 422 invalid_message if it is not a
    batch, 413 payload_too_large past ``max_items``."""
    try:  # the items' own text is checked item by item (check_item), not here
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("body is not UTF-8 JSON") from exc
    if not isinstance(data, dict):
        raise InvalidMessage(
            'a batch is an object {"items": [...]}', errors=[_error("", "must be an object")]
        )
    errors = [_error(_name(key), "unknown field") for key in data if key != "items"]
    items = data.get("items")
    if not isinstance(items, list):
        errors.append(_error("items", "must be an array of strings"))
    if errors:
        raise InvalidMessage("the batch does not validate", errors=errors)
    assert isinstance(items, list)
    if len(items) > max_items:
        raise PayloadTooLarge(f"a batch takes at most {max_items} items")
    if not items:
        raise InvalidMessage("the batch does not validate", errors=[_error("items", "must not be empty")])
    not_text = [
        _error(f"items.{i}", "must be a string") for i, item in enumerate(items) if not isinstance(item, str)
    ]
    if not_text:
        raise InvalidMessage("the batch does not validate", errors=not_text[:20])
    return items


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _name(key: str) -> str:
    """A field name fit to echo (a key the peer made up may be anything)."""
    return key if _SAFE_NAME.fullmatch(key) else "(unnamed)"


def _error(field: str, reason: str) -> dict[str, str]:
    return {"field": field, "reason": reason}


@dataclass(frozen=True)
class Refused:
    """An item refused before storage, with what can be told of it."""

    error: DomainError
    message_id: str | None
    message_type: str | None


def check_item(
    text: str,
    endpoints: Mapping[str, PeerEndpoint],
    signature: VerifiedSignature,
    *,
    local_node: str,
) -> CheckedItem | Refused:
    """Rule 8 for one item, as its single endpoint applies it (no database)."""
    message_id: str | None = None
    message_type: str | None = None
    try:
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (a "\ud800" escape in the batch)
            raise InvalidMessage("body is not UTF-8 JSON without NUL characters") from exc
        data = load_json(body)
        if isinstance(data, dict):
            message_id = _uuid_text(data.get("message_id"))
            raw_type = data.get("type")
            message_type = raw_type if isinstance(raw_type, str) and raw_type in endpoints else None
        if message_type is None:
            reason = "must be one of " + ", ".join(f"'{t}'" for t in endpoints)
            raise InvalidMessage("the item is not an asynchronous message", errors=[_error("type", reason)])
        endpoint = endpoints[message_type]
        envelope = validate_envelope(endpoint, data)
        correlation = envelope.correlation_id
        if endpoint.correlated and correlation is None:
            raise InvalidMessage(
                f"correlation_id is required on {message_type}",
                errors=[_error("correlation_id", "must be the message_id of the message it answers")],
            )
        check_addressing(
            endpoint,
            envelope,
            signature,
            local_node=local_node,
            path_request_id=str(correlation) if endpoint.correlated else None,
        )
    except DomainError as exc:
        return Refused(exc, message_id, message_type)
    return CheckedItem(endpoint, envelope, body, content_digest(body))


def _uuid_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class Answer:
    """One item's answer before signing."""

    message_id: str | None
    status: int
    body: bytes
    message_type: str | None = None  # for the node's metrics

    @property
    def outcome(self) -> str:
        return {202: "accepted", 200: "duplicate"}.get(self.status, "rejected")


def answer_of(
    outcome: Accepted | DomainError, message_id: str | None, message_type: str | None = None
) -> Answer:
    if isinstance(outcome, Accepted):
        return Answer(message_id, outcome.status_code, outcome.body, message_type)
    return Answer(message_id, outcome.status_code, canonical_json(outcome.problem()), message_type)


def response_body(
    answers: Sequence[Answer],
    *,
    key: Ed25519PrivateKey,
    keyid: str,
    created: datetime,
    request: RequestBinding | None = None,
) -> bytes:
    """The batch's 200 body: every answer signed on its own (after the commit: nothing slow before),
    each bound to the batch ``request``."""
    results = []
    for answer in answers:
        signature_input, signature = sign_item(
            answer.status, answer.body, key=key, keyid=keyid, created=created, request=request
        )
        results.append(
            {
                "message_id": answer.message_id,
                "status": answer.status,
                "body": answer.body.decode("utf-8"),
                "signature_input": signature_input,
                "signature": signature,
            }
        )
    return canonical_json({"results": results})


# --- the sender ------------------------------------------------------------------------------------


def item_size(body: bytes) -> int:
    """Bytes ``body`` takes inside a batch (as a JSON string, with its comma)."""
    return len(json.dumps(body.decode("utf-8"), ensure_ascii=False).encode("utf-8")) + 1


def request_body(bodies: Sequence[bytes]) -> bytes:
    """``{"items":[…]}`` of these message bodies, in order."""
    items = b",".join(json.dumps(b.decode("utf-8"), ensure_ascii=False).encode("utf-8") for b in bodies)
    return _ITEMS_OPEN + items + _ITEMS_CLOSE


def chunks(sizes: Sequence[int], *, max_items: int, max_bytes: int) -> Iterator[list[int]]:
    """Indexes of the items, in order, cut into batches of at most ``max_items`` items and
    ``max_bytes`` bytes of body (``sizes`` from ``item_size``). An item too big for any batch is a
    chunk of its own (sent alone, on its single endpoint)."""
    room = max_bytes - len(_ITEMS_OPEN) - len(_ITEMS_CLOSE) + 1  # the last item has no comma
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        if current and (len(current) >= max_items or used + size > room):
            yield current
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        yield current


def parse_response(body: bytes, count: int) -> list[BatchResult] | None:
    """The results of a batch of ``count`` items, or None if the answer is not one."""
    try:
        parsed = BatchResponse.model_validate_json(body)
    except ValidationError:
        return None
    return parsed.results if len(parsed.results) == count else None
