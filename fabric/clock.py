"""Time as a dependency, so TTLs, idle limits and sweepers are tested with a fake clock."""

from __future__ import annotations

import threading
import time
from typing import Protocol


def elapsed_us(started: float) -> int:
    """Whole microseconds since `started`, a `time.perf_counter()` reading: the time
    spent that result summaries report."""
    return int((time.perf_counter() - started) * 1_000_000)


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...


class WallClock(Protocol):
    def time(self) -> float:
        """Seconds since the Unix epoch: calendar time, as token claims count it."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to, for both monotonic and calendar time (they
    read the same number); thread-safe."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now

    def set(self, now: float) -> None:
        """Jump to `now`, as a calendar clock may (tests of exact token-time edges); code
        reading `monotonic()` should be driven with `advance` only."""
        with self._lock:
            self._now = now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds


SYSTEM_CLOCK = SystemClock()
