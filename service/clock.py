"""The one source of time: tests move it, everything else reads it.

``YIPANQI_CLOCK_OFFSET_SECONDS`` (read once, when the process starts) shifts a node's clock by
that many seconds, negative for the past: tests start real nodes days or weeks ahead to see
reminders and overdue items without waiting. Never set it in production.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

OFFSET_ENV = "YIPANQI_CLOCK_OFFSET_SECONDS"


def offset_from_env(environ: Mapping[str, str] = os.environ) -> timedelta:
    """The clock offset the environment asks for; a value that is not a finite number is refused."""
    raw = environ.get(OFFSET_ENV, "").strip()
    if not raw:
        return timedelta(0)
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(seconds) or abs(seconds) > 100 * 366 * 86400:
        raise ValueError(f"{OFFSET_ENV} must be a finite number of seconds within a century")
    return timedelta(seconds=seconds)


class Clock:
    """UTC wall clock with an optional offset (for tests that move time)."""

    def __init__(self, offset: timedelta | None = timedelta(0)) -> None:
        """``offset=None``: the one the environment asks for, read when the clock is first used
        (so a bad value is refused as a setting, with its name, not as an import error)."""
        self._start_offset = offset
        self._offset = offset
        self._frozen: datetime | None = None

    def _current_offset(self) -> timedelta:
        if self._offset is None:
            self._start_offset = self._offset = offset_from_env()
        return self._offset

    def now(self) -> datetime:
        if self._frozen is not None:
            return self._frozen
        return datetime.now(UTC) + self._current_offset()

    def freeze(self, at: datetime) -> None:
        self._frozen = at.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        if self._frozen is not None:
            self._frozen += delta
        else:
            self._offset = self._current_offset() + delta

    @property
    def offset(self) -> timedelta:
        return self._current_offset()

    def rebase(self, offset: timedelta) -> None:
        """Make ``offset`` the one this clock starts from and returns to (a test session's pinned now)."""
        self._start_offset = offset
        self.reset()

    def reset(self) -> None:
        """Back to the offset the process started with (none unless the environment set one)."""
        self._offset = self._start_offset
        self._frozen = None


clock = Clock(None)


def utcnow() -> datetime:
    return clock.now()
