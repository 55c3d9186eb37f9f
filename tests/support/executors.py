"""A worker pool that counts what it is given: how tests see thread hops."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any


class CountingExecutor(ThreadPoolExecutor):
    """The engine's worker pool, counting the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="counted")
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)
