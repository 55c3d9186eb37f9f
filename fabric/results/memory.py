"""The gateway's memory budget: the bytes results hold, counted in one place against one
limit, and memory handed back to the system once it is free.

What is counted, by use:

    reserved   the working set of each query running at a source (rows read ahead, IPC
               messages on their way), reserved when the query is admitted
               (`fabric.query.admission`) and returned when it ends
    building   results being collected for the cache while they stream
    cached     entries of the result cache, and entries evicted while a caller is still
               sending them (they stay in memory until it is done)
    buffered   rows open statements read ahead of their caller

Reservations and growth that would go over the limit are refused (`try_charge`): a new
query then waits for memory or is refused (admission), a result being built stops being
collected and streams through uncached, a statement's buffer stops growing. Moving bytes
from one use to another (a built result becoming a cache entry) never fails.

`MemoryCharge` is what one holder has charged: a builder, a cached result (with the
callers reading it), a statement's buffer. It is released once, whatever path ends it.

Giving memory back: freed memory stays with the allocator that freed it. pyarrow's
default allocator here (mimalloc) keeps freed pages in the heap of the thread that freed
them, out of reach of `release_unused` called from another thread (measured: 336 MiB kept
after a load, with nothing allocated). A gateway process therefore lets Arrow use the
system allocator and sets glibc up to keep little (`tune_allocators`): two arenas instead
of one per thread (each arena keeps its own high-water mark) and blocks of 1 MiB or more
mapped on their own, so they go back to the system when freed instead of raising the
heap's high-water mark. Once idle, it asks glibc to return its free pages
(`give_back_memory`: `malloc_trim`). Measured with 16 callers reading 47 MiB results
under a 512 MiB budget: a peak of 870 MiB RSS without the glibc settings, 570 with them,
at the same throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache

import pyarrow as pa

__all__ = [
    "USES",
    "GiveBackWhenIdle",
    "MemoryBudget",
    "MemoryCharge",
    "give_back_memory",
    "tune_allocators",
    "unlimited_budget",
]

log = logging.getLogger(__name__)

USES = ("reserved", "building", "cached", "buffered")


class MemoryBudget:
    """Bytes in use by kind, against one limit; thread-safe. Listeners hear of every
    release (outside the lock), so waiters for memory can look again."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a memory budget must be positive")
        self.limit = limit
        self._lock = threading.Lock()
        self._used = dict.fromkeys(USES, 0)
        self._total = 0
        self._refused = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._total

    @property
    def available(self) -> int:
        with self._lock:
            return self.limit - self._total

    def usage(self) -> dict[str, int]:
        """Bytes in use by kind."""
        with self._lock:
            return dict(self._used)

    @property
    def refused(self) -> int:
        """Charges refused for lack of memory."""
        with self._lock:
            return self._refused

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each release (from the releasing thread)."""
        self._listeners.append(listener)

    def try_charge(
        self, use: str, nbytes: int, *, within: int | None = None, force: bool = False
    ) -> bool:
        """Count `nbytes` more for `use` if the budget (and `within`, a cap on this use
        alone) allows it; False, and nothing counted, otherwise. `force`: count bytes
        already held, room or not (the budget is then over its limit until they go)."""
        with self._lock:
            fits = force or (
                self._total + nbytes <= self.limit
                and (within is None or self._used[use] + nbytes <= within)
            )
            if not fits:
                self._refused += 1
                return False
            self._used[use] += nbytes
            self._total += nbytes
            return True

    def release(self, use: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            self._used[use] -= nbytes
            self._total -= nbytes
        for listener in self._listeners:
            listener()

    def move(self, source: str, target: str, nbytes: int) -> None:
        """Count bytes already held under another use (never refused: nothing new is
        held)."""
        with self._lock:
            self._used[source] -= nbytes
            self._used[target] += nbytes

    def charge(self, use: str) -> MemoryCharge:
        """A new, empty charge of one holder."""
        return MemoryCharge(self, use)


def unlimited_budget() -> MemoryBudget:
    """A budget that never refuses (a component used on its own, in tests or tools)."""
    return MemoryBudget(sys.maxsize)


class MemoryCharge:
    """The bytes one holder has charged to a budget, of one use at a time.

    A cached result's charge is also read: `hold` and `drop` bracket each caller sending
    it, and `retire` (the entry left the cache) releases the bytes only once nobody
    holds them. Every other holder calls `release` when it lets go of its bytes.
    Thread-safe; `release` and `retire` are idempotent."""

    __slots__ = ("_budget", "_lock", "_readers", "_released", "_retired", "nbytes", "use")

    def __init__(self, budget: MemoryBudget, use: str) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self.use = use
        self.nbytes = 0
        self._readers = 0
        self._retired = False
        self._released = False

    def grow(self, nbytes: int, *, within: int | None = None, force: bool = False) -> bool:
        """Charge `nbytes` more; False (nothing charged) when the budget has no room,
        unless `force` (bytes already held)."""
        with self._lock:
            if self._released:
                return False
            if not self._budget.try_charge(self.use, nbytes, within=within, force=force):
                return False
            self.nbytes += nbytes
            return True

    def shrink(self, nbytes: int) -> None:
        """Give back `nbytes` of what is charged."""
        with self._lock:
            nbytes = min(nbytes, self.nbytes)
            self.nbytes -= nbytes
        self._budget.release(self.use, nbytes)

    def move(self, use: str) -> None:
        with self._lock:
            if self._released or use == self.use:
                self.use = use
                return
            self._budget.move(self.use, use, self.nbytes)
            self.use = use

    def hold(self) -> None:
        """A caller starts sending the bytes."""
        with self._lock:
            self._readers += 1

    def drop(self) -> None:
        """A caller is done sending them."""
        with self._lock:
            self._readers -= 1
            free = self._retired and self._readers == 0
        if free:
            self.release()

    def retire(self) -> None:
        """The holder let go; the bytes are released once no caller is sending them."""
        with self._lock:
            self._retired = True
            free = self._readers == 0
        if free:
            self.release()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            nbytes, self.nbytes = self.nbytes, 0
        self._budget.release(self.use, nbytes)

    def __repr__(self) -> str:
        return f"MemoryCharge(use={self.use!r}, nbytes={self.nbytes}, readers={self._readers})"


# -- giving memory back -------------------------------------------------------------------


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
"""glibc arenas: threads mostly allocate holding the GIL, so more arenas buy little
besides more kept memory."""
MALLOC_MMAP_THRESHOLD = 1 << 20
"""Bytes from which glibc maps a block on its own (fixed: glibc otherwise raises it to
the largest block freed, up to 32 MiB, and IPC messages then stay in the heap)."""


def tune_allocators() -> None:
    """Set the process up to give memory back (see the module docstring): Arrow on the
    system allocator, glibc with few arenas and a fixed mapping threshold. What the
    operator chose in the environment (ARROW_DEFAULT_MEMORY_POOL, MALLOC_ARENA_MAX,
    MALLOC_MMAP_THRESHOLD_) is left as it is. Call it before worker threads start."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)


@cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """A glibc function (`malloc_trim`, `mallopt`), or None on another C library."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    return function


def give_back_memory() -> None:
    """Return free memory to the system: Arrow's pool first (what it keeps cached), then
    the C allocator's free pages. Blocking (a trim of a large heap takes milliseconds):
    call it from a worker thread, when the gateway is idle."""
    pa.default_memory_pool().release_unused()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


class GiveBackWhenIdle:
    """Returns free memory to the system (`give_back_memory`, in a worker thread) once
    the gateway is idle: when the last query running at a source has ended, at most once
    per `interval` seconds (a burst of short queries costs one give-back, not one each).
    `idle` and `stop` may be called from any thread; the timer runs on the loop given to
    `bind` (the gateway's)."""

    def __init__(
        self, executor: Executor, busy: Callable[[], bool], *, interval: float = 1.0
    ) -> None:
        self._executor = executor
        self._busy = busy
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        """The loop a give-back is scheduled on (None: none is)."""
        self._last = -interval
        self._stopped = False
        self.given_back = 0
        """Times memory was given back."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def idle(self) -> None:
        loop = self._loop
        if loop is None or self._stopped:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing runs any more
            loop.call_soon_threadsafe(self._schedule, loop)

    def stop(self) -> None:
        """No give-back from now on (the engine is closing)."""
        self._stopped = True

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer_loop is loop:
            return  # one is on its way
        self._timer_loop = loop
        delay = max(0.0, self._last + self._interval - loop.time())
        loop.call_later(delay, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_loop = None
        if self._stopped or self._busy():
            return  # the next idle moment will do it
        self._last = loop.time()
        self.given_back += 1
        with contextlib.suppress(RuntimeError):  # the executor has shut down
            loop.run_in_executor(self._executor, _give_back_quietly)


def _give_back_quietly() -> None:
    try:
        give_back_memory()
    except Exception as exc:  # giving back is a courtesy: never fail anything for it
        log.debug("giving memory back failed: %s", type(exc).__name__)
