"""A small thread-safe bounded connection pool for drivers that have none (PyMySQL, pymssql).

At most `max_size` connections exist at once, idle or lent out. `acquire` hands out an
idle connection (newest first, so the rest can age out), opens a new one while under the
bound, and otherwise waits up to `timeout` seconds for one to come back. Connections are
opened outside the lock, so a slow or unreachable server never blocks `release`. A
connection is given back with `reuse=False` when its state is unknown (a query was
killed, the socket failed): it is closed and its slot freed. Idle connections beyond
`min_size` are closed once idle for `max_idle` seconds; one idle longer than `check_after`
seconds is checked (`check`, a round trip) before it is lent out, and replaced if the check
fails. Every idle connection is also looked at (`alive`, a cheap local test such as a
poll of its socket) each time before it is lent out: one its server has dropped is
discarded and another taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from fabric.errors import SourceUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class PoolTimeout(SourceUnavailable):
    """No connection could be lent out within the pool timeout."""


class BoundedPool(Generic[T]):
    """A bounded pool of driver connections; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], T],
        close: Callable[[T], None],
        *,
        min_size: int = 0,
        max_size: int = 5,
        timeout: float = 10.0,
        max_idle: float = 300.0,
        check: Callable[[T], bool] | None = None,
        check_after: float = 30.0,
        alive: Callable[[T], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (0 <= min_size <= max_size and max_size >= 1):
            raise ValueError("pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1")
        self._connect = connect
        self._close = close
        self._check = check
        self._alive = alive
        self.min_size, self.max_size = min_size, max_size
        self.timeout, self.max_idle, self.check_after = timeout, max_idle, check_after
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: list[tuple[float, T]] = []  # (returned at, connection), oldest first
        self._size = 0  # connections in existence: idle + lent out + being opened
        self._waiting = 0  # callers of `acquire` waiting for a connection
        self._closed = False

    @property
    def size(self) -> int:
        with self._cond:
            return self._size

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def figures(self) -> tuple[int, int, int]:
        """(lent out or being opened, idle, callers waiting), read at once."""
        with self._cond:
            idle = len(self._idle)
            return self._size - idle, idle, self._waiting

    def acquire(self, timeout: float | None = None) -> T:
        """An open connection; PoolTimeout when none is free within the pool timeout (or
        `timeout`, when sooner). Errors of `connect` propagate as they are (the caller
        maps them)."""
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        deadline = self._clock() + wait
        while True:
            stale: list[T] = []
            candidate: tuple[float, T] | None = None
            with self._cond:
                while True:
                    if self._closed:
                        raise SourceUnavailable("the connection pool is closed")
                    stale = self._expire_locked()
                    if self._idle:
                        candidate = self._idle.pop()
                        break
                    if self._size < self.max_size:
                        self._size += 1
                        break
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise PoolTimeout(
                            f"every one of the {self.max_size} pooled connections stayed busy "
                            f"for {wait:g}s; try again or raise pool_max"
                        )
                    self._waiting += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._waiting -= 1
            for conn in stale:
                self._discard(conn)
            if candidate is None:
                try:
                    return self._connect()
                except BaseException:
                    self._free_slot()
                    raise
            returned_at, conn = candidate
            stale_for = self._clock() - returned_at
            if not self._safe_alive(conn) or (
                self._check is not None
                and stale_for > self.check_after
                and not self._safe_check(conn)
            ):
                self._discard(conn)
                self._free_slot()
                continue
            return conn

    def release(self, conn: T, *, reuse: bool) -> None:
        """Give a connection back; it is closed instead when `reuse` is false or the pool
        is closed."""
        with self._cond:
            keep = reuse and not self._closed
            if keep:
                self._idle.append((self._clock(), conn))
                self._cond.notify()
        if not keep:
            self._discard(conn)
            self._free_slot()

    def close(self) -> None:
        """Close every idle connection; connections lent out are closed when given back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for _, conn in idle:
            self._discard(conn)

    def _expire_locked(self) -> list[T]:
        now = self._clock()
        expired: list[T] = []
        while len(self._idle) > self.min_size and now - self._idle[0][0] > self.max_idle:
            expired.append(self._idle.pop(0)[1])
            self._size -= 1
        if expired:
            self._cond.notify_all()
        return expired

    def _free_slot(self) -> None:
        with self._cond:
            self._size -= 1
            self._cond.notify()

    def _safe_alive(self, conn: T) -> bool:
        if self._alive is None:
            return True
        try:
            return self._alive(conn)
        except Exception:
            return False

    def _safe_check(self, conn: T) -> bool:
        assert self._check is not None
        try:
            return self._check(conn)
        except Exception:
            return False

    def _discard(self, conn: T) -> None:
        try:
            self._close(conn)
        except Exception as exc:  # closing a broken connection may fail; it is gone anyway
            log.debug("closing a pooled connection failed: %s", type(exc).__name__)
