"""Each source's own lane: the threads its queries' driver calls run on, and what an
admitted query holds of it.

Admission (`fabric.query.admission`) decides how many queries run at a source at once
(its pool's size); the lane gives those queries threads of their own, as many as the
source has connections (`Connector.capacity`; the engine's worker count for a source
without a pool), so an admitted query never waits for a thread and a source that stops
answering holds only its own lane's threads, never another source's. An admitted query
holds its admission through `LaneCalls`: it is given back once the query's run is over
and no driver call of it is still running on the lane (a call stuck at a frozen source
keeps its slot, so the next query cannot be admitted only to wait for its thread).
Lanes are made per connector on first use and kept as long as the connector lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from connectors import Connector
from connectors.workers import WorkerThreads

T = TypeVar("T")


class LaneCalls:
    """An admitted query's hold on its lane: `on_free` runs once (from whichever thread
    lets go last) when the query is `release`d, every `hold` taken is given back, and
    every call submitted through it has returned."""

    __slots__ = ("_freed", "_holds", "_lane", "_lock", "_on_free", "_released")

    def __init__(self, lane: SourceLane, on_free: Callable[[], None]) -> None:
        self._lane = lane
        self._on_free = on_free
        self._lock = threading.Lock()
        self._holds = 1  # the query itself
        self._released = False
        self._freed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run a blocking call of this query on the lane's threads."""
        self._take()
        try:
            future = self._lane.threads.submit(fn, *args)
        except BaseException:
            self._drop()
            raise
        future.add_done_callback(lambda _: self._drop())
        return future

    def hold(self) -> Callable[[], None]:
        """One more hold (a source run that is open); the callable returned gives it back
        (idempotent)."""
        self._take()
        given_back = threading.Event()

        def give_back() -> None:
            if not given_back.is_set():
                given_back.set()
                self._drop()

        return give_back

    def release(self) -> None:
        """The query is over (idempotent); the admission is given back once its run is
        closed and its calls have returned."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._drop()

    def _take(self) -> None:
        with self._lock:
            self._holds += 1

    def _drop(self) -> None:
        with self._lock:
            self._holds -= 1
            free = self._holds == 0 and not self._freed
            if free:
                self._freed = True
        if free:
            self._on_free()


class SourceLane:
    """One source's threads; see the module docstring."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.max_threads = threads
        self.threads: Executor = WorkerThreads(threads, name=f"fabric-{name}")

    def hold(self, on_free: Callable[[], None]) -> LaneCalls:
        """The hold of a query just admitted to this source; `on_free` gives its
        admission back."""
        return LaneCalls(self, on_free)

    def close(self) -> None:
        """Take no more calls; running ones are not waited for (threads are daemons)."""
        self.threads.shutdown(wait=False)


class Lanes:
    """The lane of each connector, made on first use (`of`); `default_threads` for a
    connector without a pool of its own."""

    def __init__(self, default_threads: int) -> None:
        self.default_threads = default_threads
        self._lock = threading.Lock()
        self._lanes: weakref.WeakKeyDictionary[Connector, SourceLane] = weakref.WeakKeyDictionary()

    def of(self, connector: Connector) -> SourceLane:
        with self._lock:
            lane = self._lanes.get(connector)
            if lane is None:
                lane = SourceLane(connector.kind, connector.capacity or self.default_threads)
                self._lanes[connector] = lane
            return lane

    def all(self) -> list[SourceLane]:
        with self._lock:
            return list(self._lanes.values())

    def close(self) -> None:
        for lane in self.all():
            lane.close()


def awaitable(future: Future[T]) -> asyncio.Future[T]:
    """An event-loop future that takes on the outcome of `future` (a call running in a
    thread). Unlike `asyncio.wrap_future`, giving up on it (a caller cancelled, a
    deadline) never cancels the call, and a call that ends after the loop has closed is
    simply not reported."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def done(finished: Future[T]) -> None:
        # A closed loop: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_copy_outcome, finished, waiter)

    future.add_done_callback(done)
    return waiter


def _copy_outcome(finished: Future[T], waiter: asyncio.Future[T]) -> None:
    if waiter.done():
        return
    if finished.cancelled():
        waiter.cancel()
        return
    error = finished.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(finished.result())
