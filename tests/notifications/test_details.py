"""Each 通报 kind validates its own ``details``; errors name the field, never echo the value."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.exchange.envelope import Envelope
from service.models import NotificationKind
from service.notifications.schemas import DETAILS, NotificationCreate, NotificationPayload

SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
FUTURE = "2999-01-01"

VALID: dict[str, dict[str, Any]] = {
    "contraception": {"method": "iud", "since": "2021-04-01"},
    "pregnancy": {"confirmed_on": "2025-05-05", "expected_delivery": "2025-12-01", "weeks": 8},
    "birth": {"birth_date": "2025-01-01", "birth_order": 1, "sex": "M", "birth_registered": True},
    "health_check": {"checked_on": "2025-05-05", "iud": "normal", "pregnancy": "negative", "disease": "none"},
    "arrival": {"arrived_on": "2025-03-01", "address_district": "410105"},
    "departure": {"departed_on": "2025-06-30", "destination_node": "310110"},
    "health_record_transfer": {
        "record_no": "DA-2025-0001",
        "institution": "金水区妇幼保健院",
        "transferred_on": "2025-07-01",
    },
}

# (kind, details, the field the error must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("contraception", {"method": "pill", "since": "2021-04-01"}, "details.method"),
    ("contraception", {"method": "iud", "since": FUTURE}, "details.since"),
    ("contraception", {"method": "iud"}, "details.since"),
    ("pregnancy", {"confirmed_on": "2025-05-05", "weeks": 46}, "details.weeks"),
    ("pregnancy", {"confirmed_on": "2025-05-05", "weeks": 0}, "details.weeks"),
    (
        "pregnancy",
        {"confirmed_on": "2025-05-05", "expected_delivery": "2025-05-01"},
        "details.expected_delivery",
    ),
    (
        "pregnancy",
        {"confirmed_on": "2025-05-05", "expected_delivery": "2026-12-01"},
        "details.expected_delivery",
    ),
    ("birth", {**VALID["birth"], "birth_order": 21}, "details.birth_order"),
    ("birth", {**VALID["birth"], "birth_order": 0}, "details.birth_order"),
    ("birth", {**VALID["birth"], "sex": "X"}, "details.sex"),
    ("birth", {**VALID["birth"], "birth_registered": "maybe"}, "details.birth_registered"),
    ("birth", {**VALID["birth"], "birth_date": "1990-01-01"}, "details.birth_date"),  # before the mother
    ("birth", {**VALID["birth"], "birth_date": FUTURE}, "details.birth_date"),
    ("health_check", {**VALID["health_check"], "iud": "lost"}, "details.iud"),
    ("health_check", {**VALID["health_check"], "pregnancy": "unknown"}, "details.pregnancy"),
    ("health_check", {**VALID["health_check"], "disease": "cured"}, "details.disease"),
    ("arrival", {"arrived_on": "2025-03-01", "address_district": "01234"}, "details.address_district"),
    ("arrival", {"arrived_on": "2025-03-01", "address_district": "4101051"}, "details.address_district"),
    ("departure", {"departed_on": "2025-06-30", "destination_node": "012345"}, "details.destination_node"),
    (
        "health_record_transfer",
        {**VALID["health_record_transfer"], "record_no": "x" * 65},
        "details.record_no",
    ),
    ("health_record_transfer", {**VALID["health_record_transfer"], "record_no": "  "}, "details.record_no"),
    (
        "health_record_transfer",
        {**VALID["health_record_transfer"], "institution": "x" * 101},
        "details.institution",
    ),
    (
        "health_record_transfer",
        {**VALID["health_record_transfer"], "institution": "医院\x00"},
        "details.institution",
    ),
    ("arrival", {**VALID["arrival"], "extra": 1}, "details.extra"),
    # Another kind's details are not this kind's.
    ("arrival", VALID["departure"], "details.arrived_on"),
]


def payload(kind: str, details: Any, **changes: Any) -> dict[str, Any]:
    return {"subject": SUBJECT, "kind": kind, "occurred_on": "2025-08-01", "details": details, **changes}


def errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        NotificationPayload.model_validate(data)
    return {".".join(map(str, e["loc"])): e["msg"] for e in caught.value.errors()}


def test_every_kind_has_a_details_model_and_an_example() -> None:
    assert set(DETAILS) == set(NotificationKind)
    assert set(VALID) == {k.value for k in NotificationKind}


@pytest.mark.parametrize("kind", list(VALID))
def test_valid_details_are_accepted_as_the_kinds_model(kind: str) -> None:
    parsed = NotificationPayload.model_validate(payload(kind, VALID[kind]))
    assert isinstance(parsed.details, DETAILS[NotificationKind(kind)])
    assert parsed.model_dump(mode="json")["details"] == {
        **dict.fromkeys(DETAILS[NotificationKind(kind)].model_fields),
        **VALID[kind],
    }


@pytest.mark.parametrize(("kind", "details", "field"), INVALID)
def test_invalid_details_name_the_field(kind: str, details: dict[str, Any], field: str) -> None:
    found = errors(payload(kind, details))
    assert field in found, found
    assert all(isinstance(v, str) and v for v in found.values())


def test_details_must_be_an_object() -> None:
    assert set(errors(payload("arrival", ["2025-03-01"]))) == {"details"}
    assert set(errors(payload("arrival", None))) == {"details"}
    assert set(errors({k: v for k, v in payload("arrival", {}).items() if k != "details"})) == {"details"}


def test_unknown_kind_is_reported_on_kind_only() -> None:
    assert set(errors(payload("adoption", {"x": 1}))) == {"kind"}


def test_occurred_on_is_neither_future_nor_before_birth() -> None:
    assert set(errors(payload("arrival", VALID["arrival"], occurred_on=FUTURE))) == {"occurred_on"}
    assert set(errors(payload("arrival", VALID["arrival"], occurred_on="1995-03-07"))) == {"occurred_on"}
    NotificationPayload.model_validate(payload("arrival", VALID["arrival"], occurred_on="1995-03-08"))


def test_errors_do_not_echo_values() -> None:
    found = errors(
        payload("health_record_transfer", {**VALID["health_record_transfer"], "record_no": "秘" * 65})
    )
    assert not any("秘" in reason for reason in found.values())


def test_envelope_locates_details_errors_under_payload() -> None:
    envelope = {
        "message_id": "0190f3c2-7d4e-7a31-9c55-2b1f0e6a4d10",
        "type": "notification",
        "sender": "410105",
        "recipient": "411627",
        "sent_at": "2026-01-01T09:00:00+08:00",
        "correlation_id": None,
        "payload": payload("birth", {**VALID["birth"], "birth_order": 30}),
    }
    with pytest.raises(ValidationError) as caught:
        Envelope[NotificationPayload].model_validate(envelope)
    assert [e["loc"] for e in caught.value.errors()] == [("payload", "details", "birth_order")]


def test_staff_create_model_validates_the_same_way() -> None:
    body = {"recipient": "411627", **payload("birth", {**VALID["birth"], "birth_order": 99})}
    with pytest.raises(ValidationError) as caught:
        NotificationCreate.model_validate(body)
    assert [e["loc"] for e in caught.value.errors()] == [("details", "birth_order")]


def test_json_schema_publishes_details_per_kind() -> None:
    schema = NotificationPayload.model_json_schema()
    mapping = {
        rule["if"]["properties"]["kind"]["const"]: rule["then"]["properties"]["details"]["$ref"]
        for rule in schema["allOf"]
    }
    assert mapping == {k.value: f"#/$defs/{model.__name__}" for k, model in DETAILS.items()}
    birth = schema["$defs"]["BirthDetails"]
    assert birth["additionalProperties"] is False
    assert (birth["properties"]["birth_order"]["minimum"], birth["properties"]["birth_order"]["maximum"]) == (
        1,
        20,
    )
