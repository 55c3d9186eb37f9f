"""The cancel / deadline / release state machine of a query on a driver that blocks.

DuckDB, PyMySQL, pymssql and psycopg's worker path run a query inside driver calls that
block the reading thread. `BlockingQueryHandle` owns what they share: the deadline (one
watcher thread for every query), the flags that say why a query stops (timed out,
cancelled, closed) and which error reading then raises, the reading thread's enter /
leave around each driver call, the interrupt re-sent until the query lets go of the
source (an interrupt that lands just before the driver starts executing is otherwise
lost), the connection cut off (`_sever`) when the query still holds it `sever_after`
seconds after it was told to stop (a source that stopped answering never gets the
interrupt: the thread blocked on it returns, and the connection is discarded), and the
release of the driver's resource exactly once. A connector supplies the hooks:
`_send_interrupt` (stop the running query, from any thread), `_sever`, `_settle` (bring
the resource to rest before it goes back), `_give_back`, and `_translate_error` (with
`_is_source_timeout` for a timeout the server enforced itself).
"""

from __future__ import annotations

import abc
import heapq
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

from connectors.base import QueryHandle
from fabric.errors import Cancelled, DeadlineExceeded, FabricError

R = TypeVar("R")

_announced = threading.local()


@contextmanager
def announcing_handles(callback: Callable[[QueryHandle], None]) -> Iterator[None]:
    """While the block runs in this thread, every `BlockingQueryHandle` made is handed to
    `callback` as soon as it exists, before its query is sent: a caller that goes away
    while the start itself waits at the source (a lock, a long plan) can cancel it there,
    although `execute` has not returned the handle yet."""
    previous = getattr(_announced, "callback", None)
    _announced.callback = callback
    try:
        yield
    finally:
        _announced.callback = previous


class DeadlineWatcher:
    """One daemon thread for every query deadline: a heap of (when, seq, callback) and a
    condition variable, instead of a timer thread per query. An expired callback runs in
    its own short-lived thread (an interrupt can block for a while)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._removed = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._wake_at = math.inf
        """When the thread wakes up next on its own (inf: only when notified)."""

    def add(self, delay: float, callback: Callable[[], None]) -> list[Any]:
        entry: list[Any] = [time.monotonic() + delay, next(self._seq), callback]
        with self._cond:
            if self._thread is None or self._pid != os.getpid():  # first use, or forked
                self._heap, self._removed, self._pid = [], 0, os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="fabric-query-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, entry)
            # Wake the thread only for a deadline earlier than its next wake-up: with
            # queries of like timeouts that is seldom, and a wake-up per query would cost
            # each query a context switch.
            if entry[0] < self._wake_at:
                self._wake_at = entry[0]
                self._cond.notify()
        return entry

    def remove(self, entry: list[Any]) -> None:
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._removed += 1
            if self._removed > 64 and self._removed * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._removed = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    heap = self._heap
                    while heap and heap[0][2] is None:
                        heapq.heappop(heap)
                        self._removed -= 1
                    if not heap:
                        self._wake_at = math.inf
                        self._cond.wait()
                        continue
                    self._wake_at = heap[0][0]
                    wait = self._wake_at - time.monotonic()
                    if wait <= 0:
                        entry = heapq.heappop(heap)
                        callback, entry[2] = entry[2], None
                        self._wake_at = -math.inf  # it looks at the heap again before waiting
                        break
                    self._cond.wait(wait)
            threading.Thread(target=callback, name="fabric-query-deadline", daemon=True).start()


DEADLINES = DeadlineWatcher()
"""The process's deadline watcher, shared by every connector."""


class BlockingQueryHandle(QueryHandle, Generic[R]):
    """A query running on `resource` (a cursor, a pooled connection) through blocking
    driver calls; see the module docstring.

    The reading thread wraps each driver call in `_enter` / `_leave`, and calls
    `_release(ok=...)` when it stops reading (the end, an error, an early stop). `cancel`
    and the deadline set their flag and interrupt the query; `close` releases the
    resource at once, or, while a thread is inside a driver call, interrupts the query
    and leaves the release to that thread. `_started` and `_finished` (the statement was
    sent; its whole result was read) say whether an idle resource can be reused.
    """

    cancelled_message: ClassVar[str] = "the query was cancelled; it was stopped at the source"
    """What reading says after `cancel`."""
    deadline_action: ClassVar[str] = "was cancelled at the source"
    """What happened to a query whose timeout passed, in the DeadlineExceeded message."""
    interrupt_every: ClassVar[float] = 0.25
    """Seconds between interrupts while the query still holds the source."""
    interrupt_attempts: ClassVar[int | None] = 40
    """Interrupts re-sent at most after the first; None: until the query lets go."""
    sever_after: ClassVar[float | None] = None
    """Seconds after it was told to stop (cancel, deadline, close) that a query still
    holding the source has its connection cut off (`_sever`); None: never (a source
    whose interrupt always lands, like an embedded database)."""

    def __init__(
        self,
        resource: R,
        timeout: float | None,
        *,
        deadlines: DeadlineWatcher | None = DEADLINES,
    ) -> None:
        self._resource: R | None = resource
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cancelled = False
        self._timed_out = False
        self._closed = False
        self._busy = False  # a thread is inside a driver call on the resource
        self._started = False
        self._finished = False
        self._interrupted = False  # an interrupt was sent: the resource's state is unsure
        self._severed = False  # the connection was cut off: it is never reused
        self._sever_entry: list[Any] | None = None
        self._settling: R | None = None  # the resource being brought to rest by _release
        self._interrupting = False  # a thread re-sends the interrupt
        # Held while an interrupt is on its way, and by _release before the resource goes
        # back: an interrupt never reaches a later query on the same resource.
        self._interrupt_lock = threading.Lock()
        self._released = threading.Event()
        self._deadline: list[Any] | None = None
        self._deadlines = deadlines
        if timeout is not None and deadlines is not None:
            self._deadline = deadlines.add(timeout, self._on_deadline)
        announce = getattr(_announced, "callback", None)
        if announce is not None:
            announce(self)

    # -- hooks ----------------------------------------------------------------------------

    def _send_interrupt(self, resource: R) -> bool:
        """Interrupt the query running on `resource` (any thread may call this); False
        when nothing runs there that an interrupt could stop."""
        return False

    def _sever(self, resource: R) -> bool:
        """Cut the resource's connection off under the driver (any thread may call
        this), so a thread blocked on it returns with an error; False when it cannot."""
        return False

    def _settle(self, resource: R, *, ok: bool) -> bool:
        """Bring the resource to rest before it goes back (it may interrupt through
        `_stop_at_source(resource)`); whether it can be reused."""
        return ok

    @abc.abstractmethod
    def _give_back(self, resource: R, *, ok: bool) -> None:
        """Return the resource (to its pool when `ok`, else discard it)."""

    def _is_source_timeout(self, exc: BaseException) -> bool:
        """Whether `exc` is the source's own timeout of this query."""
        return False

    @abc.abstractmethod
    def _translate_error(self, exc: BaseException) -> FabricError:
        """The FabricError of a driver exception, never carrying the source's message."""

    # -- public ---------------------------------------------------------------------------

    def cancel(self) -> None:
        with self._lock:
            if self._closed or self._cancelled or self._timed_out:
                return
            self._cancelled = True
        self._stop_at_source()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = self._busy
        if busy:
            # Another thread is inside the driver: stop the query there; that thread
            # releases the resource when its call returns.
            self._stop_at_source()
            return
        self._release(ok=not self._started or self._finished)

    # -- state ----------------------------------------------------------------------------

    def _on_deadline(self) -> None:
        with self._lock:
            settling = self._settling is not None
            if not settling:
                if self._closed or self._cancelled:
                    return
                self._timed_out = True
        if settling:
            # Bringing the connection back to rest (a rollback, the rest of a cancelled
            # pipeline) outlived the query's deadline: the source is not answering.
            self._schedule_sever()
            return
        self._stop_at_source()

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the query ran past its timeout of {self._timeout}s and {self.deadline_action}; "
            "narrow it or raise the timeout"
        )

    def _flag_error(self) -> FabricError | None:
        """Why the query stops, when it does."""
        if self._timed_out:
            return self._deadline_error()
        if self._cancelled:
            return Cancelled(self.cancelled_message)
        if self._closed:
            return Cancelled("the query handle was closed")
        return None

    def _stopped(self) -> bool:
        """Whether the query was told to stop (cancelled, timed out, closed)."""
        return self._flag_error() is not None

    def _check(self) -> None:
        flagged = self._flag_error()
        if flagged is not None:
            raise flagged

    def _enter(self) -> None:
        """Before a driver call: raise when the query stops, else mark the thread busy."""
        with self._lock:
            self._check()
            self._busy = True

    def _leave(self) -> None:
        with self._lock:
            self._busy = False

    def _map(self, exc: BaseException) -> FabricError:
        """The error reading raises for `exc`: why the query was stopped, if it was."""
        if isinstance(exc, FabricError):
            return exc
        flagged = self._flag_error()
        if flagged is not None:
            return flagged
        if self._timeout is not None and self._is_source_timeout(exc):
            self._timed_out = True
            return self._deadline_error()
        return self._translate_error(exc)

    # -- stopping and releasing -------------------------------------------------------------

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadlines is not None:
            self._deadlines.remove(self._deadline)

    def _schedule_sever(self) -> None:
        """Once per query: cut the connection off `sever_after` seconds from now unless
        the query has let go of it by then."""
        if self.sever_after is None or self._deadlines is None:
            return
        with self._lock:
            if self._sever_entry is not None or self._released.is_set():
                return
            self._sever_entry = self._deadlines.add(self.sever_after, self._sever_if_held)

    def _sever_if_held(self) -> None:
        with self._interrupt_lock:
            if self._released.is_set():
                return
            resource = self._resource
            if resource is None:
                resource = self._settling
            elif not self._holds_source():
                return
            if resource is None:
                return
            self._interrupted = True
            self._severed = self._sever(resource)

    def _holds_source(self) -> bool:
        """Whether the query may still run at the source (the interrupt is re-sent)."""
        return self._busy

    def _stop_at_source(self, resource: R | None = None) -> None:
        """Interrupt the query, and re-send the interrupt every `interrupt_every` seconds
        from a daemon thread while it holds the source."""
        target = self._resource if resource is None else resource
        if target is None:
            return
        self._schedule_sever()
        with self._lock:
            if self._interrupting:
                return
            self._interrupting = True
        if self._interrupt_once(target) and self._holds_source():
            threading.Thread(
                target=self._interrupt_until_let_go,
                args=(target,),
                name="fabric-query-interrupt",
                daemon=True,
            ).start()
            return
        with self._lock:
            self._interrupting = False

    def _interrupt_once(self, resource: R) -> bool:
        with self._interrupt_lock:
            if self._released.is_set() or not self._send_interrupt(resource):
                return False
            self._interrupted = True
            return True

    def _interrupt_until_let_go(self, resource: R) -> None:
        try:
            sent = 0
            while self.interrupt_attempts is None or sent < self.interrupt_attempts:
                sent += 1
                if self._released.wait(self.interrupt_every) or not self._holds_source():
                    return
                if not self._interrupt_once(resource):
                    return
        finally:
            with self._lock:
                self._interrupting = False

    def _release(self, *, ok: bool) -> None:
        """Settle the resource and give it back; idempotent. The deadline stays armed
        while the resource settles: a source that stops answering then is cut off."""
        with self._lock:
            resource, self._resource = self._resource, None
            self._settling = resource
        if resource is None:
            self._stop_deadline()
            return
        try:
            ok = self._settle(resource, ok=ok and not self._interrupted)
        finally:
            with self._interrupt_lock:
                self._released.set()
                self._settling = None
            self._stop_deadline()
            sever_entry = self._sever_entry
            if sever_entry is not None and self._deadlines is not None:
                self._deadlines.remove(sever_entry)
        self._give_back(resource, ok=ok and not self._interrupted)
