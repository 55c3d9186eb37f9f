"""CPU cost of a call relative to a reference measured in the same process, so a test
asserts how work scales (a ratio), never an absolute time that a loaded machine breaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

import sqlglot


def cpu_seconds(action: Callable[[], object], *, repeat: int = 3) -> float:
    """The least CPU time of this thread over `repeat` runs of `action` (an exception it
    raises ends that run; what is measured is the work until then). Thread CPU time,
    not wall time: other processes on the machine do not count."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        with suppress(Exception):  # a rejection is the work being measured
            action()
        best = min(best, time.thread_time() - started)
    return best


def tokenize_seconds(sql: str, dialect: str = "postgres") -> float:
    """The CPU time of one pass of sqlglot's tokenizer over `sql`: the least any reader of
    the text does, linear in its length."""
    return cpu_seconds(lambda: sqlglot.tokenize(sql, read=dialect))
