"""Property tests of the envelope parser (hypothesis, bounded so CI stays fast): whatever a peer
sends — arbitrary bytes, arbitrary JSON, an envelope with any field replaced by anything — the
inbox's parser (``parse_envelope`` / ``check_envelope``, rule 8 of docs/protocol.md) and the
batch's item check answer with the protocol's own refusal (a DomainError: 422 invalid_message,
403 sender/recipient mismatch), never with another exception (which would be a 500); and the
sender's parsers of answers (a receipt, a batch answer) refuse with their validation error only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.errors import DomainError
from service.exchange import batch
from service.exchange.envelope import Envelope, Receipt
from service.exchange.inbox import check_envelope, parse_envelope
from service.main import PEER_ENDPOINTS
from service.signing.http import VerifiedSignature

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ASKER, HOST = "410105", "411627"
SIGNATURE = VerifiedSignature(
    keyid=f"{ASKER}/k1",
    nonce="bm9uY2Utbm9uY2Utbm9uY2U",
    created=datetime(2026, 6, 10, 2, 0, tzinfo=UTC),
    expires=datetime(2026, 6, 10, 2, 5, tzinfo=UTC),
    signature_input="",
    signature="",
)
ENDPOINTS = {e.message_type: e for e in PEER_ENDPOINTS}
ASYNCHRONOUS = {t: e for t, e in ENDPOINTS.items() if not e.synchronous}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
FIELDS = ("message_id", "type", "sender", "recipient", "sent_at", "correlation_id", "payload")


def _envelope(message_type: str) -> dict[str, Any]:
    return {
        "message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10",
        "type": message_type,
        "sender": ASKER,
        "recipient": HOST,
        "sent_at": "2026-06-10T10:00:00+08:00",
        "correlation_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11",
        "payload": {},
    }


def _parse(message_type: str, body: bytes) -> None:
    """Rule 8 on ``body`` at the endpoint of ``message_type``: a DomainError or an Envelope."""
    endpoint = ENDPOINTS[message_type]
    status = None
    try:
        envelope = parse_envelope(endpoint, body)
        assert isinstance(envelope, Envelope)
        check_envelope(
            endpoint,
            body,
            SIGNATURE,
            local_node=HOST,
            path_request_id="0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d11" if endpoint.correlated else None,
        )
    except DomainError as exc:  # anything else fails the test
        status = exc.status_code
    assert status is None or 400 <= status < 500, status
    if message_type in ASYNCHRONOUS:  # the same bytes as one item of a batch
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return
        checked = batch.check_item(text, ASYNCHRONOUS, SIGNATURE, local_node=HOST)
        if isinstance(checked, batch.Refused):
            assert 400 <= checked.error.status_code < 500


@BOUNDED
@given(message_type=st.sampled_from(sorted(ENDPOINTS)), body=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_the_protocols_error(message_type: str, body: bytes) -> None:
    _parse(message_type, body)


@BOUNDED
@given(message_type=st.sampled_from(sorted(ENDPOINTS)), value=json_values)
def test_arbitrary_json_is_refused_with_the_protocols_error(message_type: str, value: Any) -> None:
    _parse(message_type, json.dumps(value).encode("utf-8"))


@BOUNDED
@given(
    message_type=st.sampled_from(sorted(ENDPOINTS)),
    field=st.sampled_from(FIELDS),
    value=json_values,
    drop=st.booleans(),
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)
def test_an_envelope_with_any_field_replaced_is_refused_or_parsed(
    message_type: str, field: str, value: Any, drop: bool, extra: dict[str, Any]
) -> None:
    envelope = _envelope(message_type)
    if drop:
        del envelope[field]
    else:
        envelope[field] = value
    payload = envelope.get("payload")
    if isinstance(payload, dict) and field != "payload":
        payload.update(extra)  # and the payload gets odd fields too
    _parse(message_type, json.dumps(envelope, ensure_ascii=False).encode("utf-8"))


@BOUNDED
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_senders_parsers_refuse_with_their_validation_error(body: bytes) -> None:
    try:
        Receipt.model_validate_json(body)
    except ValidationError:
        pass
    assert batch.parse_response(body, 1) is None or len(batch.parse_response(body, 1) or []) == 1
