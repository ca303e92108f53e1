"""Clocks: the pure core never reads time itself, it is handed a clock.

Times are seconds since the Unix epoch (UTC), as floats. Windows aligned to UTC minutes and
days follow from that: ``floor(t / 60)`` and ``floor(t / 86400)`` number them.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time, in seconds since the epoch."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time, optionally shifted to agree with another clock (Redis's)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        """Seconds added to the local clock, e.g. Redis time minus local time."""

    def now(self) -> float:
        return time.time() + self.offset


class FakeClock:
    """A clock that moves only when told to; for tests of timing logic."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
