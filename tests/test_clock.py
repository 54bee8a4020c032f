"""Time has one source (service/clock.py), and tests run on a clock pinned by YIPANQI_TEST_NOW."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.clock import Clock, utcnow
from tests.conftest import DEFAULT_TEST_NOW, TEST_NOW, TEST_NOW_ENV, clock_offset, pinned_now

ROOT = Path(__file__).resolve().parent.parent
WALL_CLOCK = re.compile(r"\b(datetime\.(now|utcnow|today)|date\.today|time\.time)\(")
MARK = "# real clock"


def test_nothing_reads_the_wall_clock_but_the_clock() -> None:
    """A read of today's date outside service/clock.py is a test that fails on some days.

    The few that must read the real clock (an offset is from it; APScheduler and the demo run on
    it) say so with ``# real clock`` on the line.
    """
    found = []
    for folder in ("service", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "node_modules" in path.parts or path == ROOT / "service" / "clock.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if WALL_CLOCK.search(line) and MARK not in line and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "read utcnow() from service.clock instead:\n" + "\n".join(found)


def test_the_session_runs_on_the_pinned_clock() -> None:
    assert abs(utcnow() - TEST_NOW) < timedelta(hours=2)  # pinned at the start, moving since
    node = Clock(timedelta(seconds=float(clock_offset())))  # what a node started by the tests reads
    assert abs(node.now() - utcnow()) < timedelta(seconds=5)
    later = Clock(timedelta(seconds=float(clock_offset(timedelta(days=40)))))
    assert abs(later.now() - utcnow() - timedelta(days=40)) < timedelta(seconds=5)
    at = datetime(2026, 11, 2, 2, tzinfo=UTC)
    assert abs(Clock(timedelta(seconds=float(clock_offset(at=at)))).now() - at) < timedelta(seconds=5)


def test_a_bad_pinned_now_is_refused_with_an_example() -> None:
    assert pinned_now({}) == datetime.fromisoformat(DEFAULT_TEST_NOW)
    assert pinned_now({TEST_NOW_ENV: "2026-12-31T23:30:00+08:00"}).utcoffset() == timedelta(hours=8)
    for bad in ("yesterday", "2026-12-31T23:30:00"):
        with pytest.raises(pytest.UsageError, match=TEST_NOW_ENV):
            pinned_now({TEST_NOW_ENV: bad})
