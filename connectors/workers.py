"""Bounded pools of daemon threads for blocking driver calls, and the lane that stops them.

`WorkerThreads` is a `concurrent.futures.Executor` whose threads are daemons: a thread
stuck in a driver call (a database that stopped answering) never holds up the process's
exit, and `shutdown(wait=True)` waits for running calls only up to `join_timeout`.
Threads start on demand up to `max_threads` and end after `idle_exit` seconds without
work, so a pool per source costs nothing while that source is quiet.

`CONTROL` is the process's lane for work that stops or releases queries (cancel
requests, closing handles, giving connections back): it never shares threads with work
that starts or reads queries, so stopping a query never waits behind new ones.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class _Work:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class WorkerThreads(Executor):
    """Up to `max_threads` daemon threads running submitted calls first come, first
    served; see the module docstring."""

    _ids = itertools.count(1)

    def __init__(
        self,
        max_threads: int,
        *,
        name: str = "fabric-worker",
        idle_exit: float = 60.0,
        join_timeout: float = 5.0,
    ) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.name = name
        self.idle_exit = idle_exit
        self.join_timeout = join_timeout
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Work] = deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._busy = 0
        self._shutdown = False

    @property
    def busy(self) -> int:
        """Calls running now."""
        with self._cond:
            return self._busy

    @property
    def queued(self) -> int:
        """Calls waiting for a thread."""
        with self._cond:
            return len(self._queue)

    @property
    def threads(self) -> int:
        with self._cond:
            return len(self._threads)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError(f"{self.name}: cannot take work after shutdown")
            self._queue.append(_Work(future, fn, args, kwargs))
            if self._idle > len(self._queue) - 1:
                self._cond.notify()
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{next(self._ids)}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with `cancel_futures`, drop the calls not started yet. With
        `wait`, wait for running calls at most `join_timeout` seconds in all: a thread
        still stuck after that is left behind (it is a daemon)."""
        with self._cond:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for work in dropped:
            work.future.cancel()
        if wait:
            deadline = time.monotonic() + self.join_timeout
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                idle_since = time.monotonic()
                while not self._queue:
                    if self._shutdown or time.monotonic() - idle_since >= self.idle_exit:
                        self._threads.discard(me)
                        return
                    self._idle += 1
                    try:
                        self._cond.wait(self.idle_exit)
                    finally:
                        self._idle -= 1
                work = self._queue.popleft()
                self._busy += 1
            try:
                work.run()
            finally:
                del work  # drop the call's arguments before waiting for the next one
                with self._cond:
                    self._busy -= 1


CONTROL = WorkerThreads(64, name="fabric-control", idle_exit=30.0)
"""The process's lane for stopping and releasing queries (see the module docstring)."""


def call_quietly(fn: Callable[[], object]) -> None:
    """Run `fn`, ignoring its errors: a cleanup step that fails leaves nothing to do."""
    with contextlib.suppress(Exception):
        fn()
