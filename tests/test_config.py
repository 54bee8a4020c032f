"""Unknown ``YIPANQI_*`` variables: refused with the closest known name, and nothing known refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import known_variables, unknown_variables

ROOT = Path(__file__).resolve().parents[1]
NOT_SETTINGS = {
    "YIPANQI_DEADLINE_X__DAYS",  # tests/test_readme.py's name for the pattern
    "YIPANQI_TEST",  # the README's `YIPANQI_TEST_*`
    "YIPANQI_DEADLINE_NORMAL_DAYS",  # misspelt on purpose, here and in tests/test_cli.py
    "YIPANQI_DATADIR",
    "YIPANQI_XYZZY",
}


def test_a_misspelt_name_gets_the_closest_known_one() -> None:
    assert unknown_variables({"YIPANQI_DEADLINE_NORMAL_DAYS": "20"}) == [
        "YIPANQI_DEADLINE_NORMAL_DAYS: did you mean YIPANQI_DEADLINE_NORMAL__DAYS?"
    ]
    assert unknown_variables({"YIPANQI_DATADIR": "/srv"}) == [
        "YIPANQI_DATADIR: did you mean YIPANQI_DATA_DIR?"
    ]


def test_a_name_like_nothing_is_still_refused() -> None:
    [problem] = unknown_variables({"YIPANQI_XYZZY": "1"})
    assert problem.startswith("YIPANQI_XYZZY: no such setting")


def test_names_are_compared_as_pydantic_settings_reads_them() -> None:
    assert unknown_variables({"yipanqi_data_dir": "/srv"}) == []
    assert unknown_variables({"yipanqi_data_dri": "/srv"}) == [
        "yipanqi_data_dri: did you mean YIPANQI_DATA_DIR?"
    ]


@pytest.mark.parametrize(
    "name",
    [
        "YIPANQI_DATA_DIR",
        "YIPANQI_DEADLINE_NORMAL",  # a nested setting whole, as JSON
        "YIPANQI_DEADLINE_NORMAL__DAYS",
        "YIPANQI_REMINDER_BEFORE__UNIT",
        "YIPANQI_CLOCK_OFFSET_SECONDS",  # service/clock.py
        "YIPANQI_TEST_DATABASE_URL",  # the tests' own
        "YIPANQI_TEST_ANYTHING_ELSE",
        "YIPANQI_SERVICE_HOST",  # Kubernetes, for a Service named yipanqi
        "YIPANQI_SERVICE_PORT_HTTP",
        "YIPANQI_PORT",
        "YIPANQI_PORT_8100_TCP_ADDR",
        "PATH",
    ],
)
def test_known_and_foreign_names_pass(name: str) -> None:
    assert unknown_variables({name: "x"}) == []


def test_every_name_the_project_uses_is_known() -> None:
    """The README, the tests and the benchmarks set these; none may be refused at start-up."""
    texts = [ROOT / "README.md", *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    used = set()
    for path in texts:
        used.update(re.findall(r"\bYIPANQI_[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8")))
    used -= NOT_SETTINGS
    assert len(used) > 20
    assert sorted(problem for name in used for problem in unknown_variables({name: "x"})) == []
    assert "YIPANQI_DEADLINE_NORMAL__UNIT" in known_variables()
