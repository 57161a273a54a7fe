"""FakeClock: time that moves only when a test says so (trio MockClock, kopf looptime)."""

from __future__ import annotations


class FakeClock:
    """A Clock for tests: ``advance(seconds)`` moves both monotonic and wall time."""

    def __init__(self, *, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
