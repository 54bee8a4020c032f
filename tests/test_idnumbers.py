"""GB 11643 ID numbers and the protocol's ``subject``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service import idnumbers
from service.subjects import Subject


@pytest.mark.parametrize("number", ["411627199503080024", "11010519491231002X", "440304200002290014"])
def test_valid_numbers(number: str) -> None:
    assert idnumbers.validate(number.lower()) == number  # a lower-case x is accepted and normalised


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("411627199503080025", "check digit"),
        ("41162719950308002", "18 characters"),
        ("011627199503080024", "18 characters"),
        ("41162719950230002" + idnumbers.check_character("41162719950230002"), "birth date"),
        ("4116271995030800A4", "18 characters"),
    ],
)
def test_invalid_numbers_say_why(number: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        idnumbers.validate(number)


def test_mask_keeps_only_the_ends() -> None:
    assert idnumbers.mask("411627199503080024") == "4116**********0024"


def test_subject_must_agree_with_its_id_number() -> None:
    ok = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
    assert Subject.model_validate(ok).id_number == "411627199503080024"
    with pytest.raises(ValidationError, match="birth_date disagrees"):
        Subject.model_validate({**ok, "birth_date": "1995-03-09"})
    with pytest.raises(ValidationError, match="sex disagrees"):
        Subject.model_validate({**ok, "sex": "M"})
    with pytest.raises(ValidationError):
        Subject.model_validate({**ok, "sex": "X"})


@pytest.mark.parametrize("name", ["王\x00秀英", "王\x1b秀英", "王\x7f"])
def test_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="control characters"):
        Subject.model_validate(
            {"id_number": "411627199503080024", "name": name, "sex": "F", "birth_date": "1995-03-08"}
        )
