"""A worker pool that counts what it is given: how tests see thread hops."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from fabric.query.engine import QueryEngine


class CountingExecutor(ThreadPoolExecutor):
    """A worker pool counting the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="counted")
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


@contextmanager
def counting_source_calls(engine: QueryEngine) -> Iterator[CountingExecutor]:
    """Every source lane the engine has made so far hands its calls to one counting pool
    (a test runs a query first, so its source's lane exists)."""
    lanes = engine.lanes.all()
    assert lanes, "run a query first: a source's lane is made on first use"
    counting = CountingExecutor()
    originals = [lane.threads for lane in lanes]
    for lane in lanes:
        lane.threads = counting
    try:
        yield counting
    finally:
        for lane, original in zip(lanes, originals, strict=True):
            lane.threads = original
        counting.shutdown(wait=True)
