"""居民身份证号 (GB 11643-1999): 17 digits and an ISO 7064 MOD 11-2 check character."""

from __future__ import annotations

import re
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_SHAPE = re.compile(r"^[1-9][0-9]{16}[0-9X]$")


def check_character(first17: str) -> str:
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def validate(id_number: str) -> str:
    """Return the number (upper-case X) or raise ValueError saying what is wrong."""
    value = id_number.strip().upper()
    if not _SHAPE.fullmatch(value):
        raise ValueError("must be 18 characters: 17 digits and a digit or X")
    if check_character(value[:17]) != value[17]:
        raise ValueError("check digit (GB 11643) does not match")
    birth_date(value)
    return value


def birth_date(id_number: str) -> date:
    try:
        return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError as exc:
        raise ValueError("digits 7-14 are not a valid birth date") from exc


def sex(id_number: str) -> str:
    """``M`` or ``F``: the 17th digit is odd for men."""
    return "M" if int(id_number[16]) % 2 else "F"


def mask(id_number: str) -> str:
    """For logs and lists: ``4101**********123X``."""
    return id_number[:4] + "*" * (len(id_number) - 8) + id_number[-4:] if len(id_number) > 8 else "****"
