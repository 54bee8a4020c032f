"""Property tests of the ID-number validator (GB 11643-1999): every well-formed number with a valid
birth date and its check character is accepted as it is; any one character changed is refused."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import idnumbers

PROPERTY = settings(max_examples=200, deadline=None)

regions = st.from_regex(r"[1-9][0-9]{5}", fullmatch=True)
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))
sequences = st.integers(min_value=0, max_value=999)


def make(region: str, birth: date, sequence: int) -> str:
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return first17 + idnumbers.check_character(first17)


@st.composite
def numbers(draw: st.DrawFn) -> str:
    return make(draw(regions), draw(births), draw(sequences))


@PROPERTY
@given(region=regions, birth=births, sequence=sequences)
def test_a_valid_number_is_accepted_and_read_back(region: str, birth: date, sequence: int) -> None:
    number = make(region, birth, sequence)
    assert idnumbers.validate(number) == number
    assert idnumbers.validate(f"  {number.lower()} ") == number  # spaces and a lower-case x
    assert idnumbers.birth_date(number) == birth
    assert idnumbers.sex(number) == ("M" if sequence % 2 else "F")
    masked = idnumbers.mask(number)
    assert masked == number[:4] + "*" * 10 + number[-4:]


@PROPERTY
@given(number=numbers(), position=st.integers(min_value=0, max_value=17), data=st.data())
def test_any_single_character_changed_is_refused(number: str, position: int, data: st.DataObject) -> None:
    alphabet = "0123456789X" if position == 17 else "0123456789"
    replacement = data.draw(st.sampled_from([c for c in alphabet if c != number[position]]))
    changed = number[:position] + replacement + number[position + 1 :]
    with pytest.raises(ValueError, match=r"check digit|18 characters") as refused:
        idnumbers.validate(changed)
    assert changed not in str(refused.value)  # the error never quotes the number


@PROPERTY
@given(region=regions, year=st.integers(1900, 2099), month=st.integers(0, 99), day=st.integers(0, 99),
       sequence=sequences)  # fmt: skip
def test_a_date_that_does_not_exist_is_refused_even_with_its_check_character(
    region: str, year: int, month: int, day: int, sequence: int
) -> None:
    try:
        date(year, month, day)
    except ValueError:
        pass
    else:
        return  # a real date: the other tests cover it
    first17 = f"{region}{year:04d}{month:02d}{day:02d}{sequence:03d}"
    with pytest.raises(ValueError, match="birth date"):
        idnumbers.validate(first17 + idnumbers.check_character(first17))


@PROPERTY
@given(number=numbers())
def test_a_region_code_starting_with_0_is_refused(number: str) -> None:
    first17 = "0" + number[1:17]
    with pytest.raises(ValueError, match="18 characters"):
        idnumbers.validate(first17 + idnumbers.check_character(first17))


@PROPERTY
@given(text=st.text(max_size=30))
def test_any_text_is_accepted_only_when_valid_and_never_crashes(text: str) -> None:
    try:
        value = idnumbers.validate(text)
    except ValueError:
        return
    assert len(value) == 18
    assert idnumbers.check_character(value[:17]) == value[17]
    idnumbers.birth_date(value)
