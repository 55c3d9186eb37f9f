"""Admission: which queries may start at their sources now, and in what order the rest
wait, so that one app cannot take the capacity every app shares.

A query about to run at its source (a cache hit runs nowhere and is not admitted) asks
for a `Ticket` with a `Claim`: who asks (tenant, principal), where it runs (its source,
and how many queries that source runs at once: its pool), whether it is short (the
compiler proved it returns at most a few rows: a key lookup, a small LIMIT) and the
memory it reserves on the gateway's budget. It is admitted at once when all of these
hold:

- its principal runs fewer than `principal_queries` queries and its tenant fewer than
  `tenant_queries`;
- its source has a free slot. A short query may take any of the source's slots; a long
  one only those not held back for short queries (`short_reserve`, always leaving at
  least one slot to long ones), so long scans never take the last connections a key
  lookup needs;
- the memory budget has room for its reservation.

Otherwise it waits: at most `max_wait` seconds and never past its call's deadline, then
it is refused, with RESOURCE_EXHAUSTED and a retry hint (DEADLINE_EXCEEDED when the
call's own deadline ended the wait). Each time a ticket is returned or memory is freed,
the waiters that now fit are admitted: first the one whose principal runs the fewest
queries, then whose tenant does, then the oldest. A caller over its share therefore
waits behind everyone else, and its waiters cannot pile up: a principal may have
`WAITING_PER_SLOT` times as many queries waiting as it may run, and one more is refused
at once.

Memory: a query reserves an estimate of its working set when it is admitted; once it
has read from its source, the engine grows the reservation (`Ticket.cover`) to what its
batches show it holds, so wide rows count for what they cost.

Thread-safe: tickets are returned from worker threads (a source closed there) and memory
freed anywhere; waiters are woken on their own event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from fabric.errors import DeadlineExceeded, ResourceExhausted
from fabric.results.memory import MemoryBudget

__all__ = [
    "REFUSAL_REASONS",
    "Admission",
    "AdmissionLimits",
    "AdmissionStats",
    "Claim",
    "Ticket",
]

K = TypeVar("K", bound=Hashable)

WAITING_PER_SLOT = 4
"""Queries a principal may have waiting, per query it may run."""

REFUSAL_REASONS = ("principal_queries", "tenant_queries", "source_busy", "memory")
"""Why a query was not admitted (metrics label `reason`)."""

_REASON_TEXT = {
    "principal_queries": "this caller already runs its share of queries ({limit} at once)",
    "tenant_queries": "this tenant already runs its share of queries ({limit} at once)",
    "source_busy": "every connection of this source that the query may use is busy",
    "memory": "the gateway's memory budget is taken by the results in flight",
}


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    tenant_queries: int
    """Queries one tenant runs at sources at once."""
    principal_queries: int
    """Queries one principal (token subject) of a tenant runs at sources at once."""
    short_reserve: int
    """Slots of each source held for short queries."""
    max_wait: float
    """Longest wait for admission, in seconds."""
    retry_after: float = 1.0
    """The retry hint of a refusal, in seconds."""
    reservations: int | None = None
    """Bytes of the memory budget all reservations together may take (the rest is kept
    for the result cache); a larger claim reserves this much, so it runs alone at worst."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What a query asks for."""

    tenant: str
    principal: str
    source: Hashable
    """The source it runs at (its connector): slots are counted per source."""
    capacity: int | None
    """Queries the source runs at once; None: no bound of its own."""
    short: bool
    """Proven to return few rows: it may use the slots held back for short queries."""
    memory: int
    """Bytes reserved on the memory budget while it runs."""


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    running: int
    waiting: int
    admitted: int
    queued: int
    """Admissions that had to wait (admitted or not in the end)."""
    refused: dict[str, int] = field(default_factory=dict)
    """By reason (`REFUSAL_REASONS`)."""


class Ticket:
    """An admitted query's slots and memory; `release` once it no longer runs at its
    source (idempotent, from any thread)."""

    __slots__ = ("_admission", "_memory", "_released", "claim")

    def __init__(self, admission: Admission, claim: Claim, memory: int) -> None:
        self._admission = admission
        self.claim = claim
        self._memory = memory
        self._released = False

    def cover(self, nbytes: int) -> None:
        """Grow the reservation to `nbytes` when the query turned out to hold more than
        it reserved (counted at once, room or not: the memory is in use)."""
        self._admission._grow(self, nbytes)

    def release_memory(self) -> None:
        """Return the memory reservation and keep the slots (a query whose rows are now
        counted by what holds them)."""
        self._admission._return(self, slots=False)

    def release(self) -> None:
        self._admission._return(self, slots=True)


class _Waiter:
    __slots__ = ("claim", "future", "loop", "seq", "ticket")

    def __init__(
        self, claim: Claim, seq: int, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        self.claim = claim
        self.seq = seq
        self.loop = loop
        self.future = future
        self.ticket: Ticket | None = None


def _principal(claim: Claim) -> tuple[str, str]:
    return (claim.tenant, claim.principal)


class Admission:
    """See the module docstring. `on_idle` is called (from the thread that returned the
    last ticket) each time no admitted query is left."""

    def __init__(
        self,
        limits: AdmissionLimits,
        memory: MemoryBudget,
        *,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if limits.tenant_queries < 1 or limits.principal_queries < 1:
            raise ValueError("query limits must be positive")
        self.limits = limits
        self._memory = memory
        self._on_idle = on_idle
        self._lock = threading.Lock()
        # Plain dicts, not Counters: these are on every query's path.
        self._by_principal: dict[tuple[str, str], int] = {}
        self._by_tenant: dict[str, int] = {}
        self._by_source: dict[Hashable, int] = {}
        self._long_by_source: dict[Hashable, int] = {}
        self._waiting_by_principal: dict[tuple[str, str], int] = {}
        self._waiters: list[_Waiter] = []
        self._running = 0
        self._seq = 0
        self._admitted = 0
        self._queued = 0
        self._refused: Counter[str] = Counter()
        memory.add_listener(self._pump)

    # -- asking ---------------------------------------------------------------------------

    async def admit(self, claim: Claim, deadline: float | None = None) -> Ticket:
        """A ticket for `claim`, at once or after a bounded wait; ResourceExhausted (with
        a retry hint) when the wait ends, DeadlineExceeded when the call's deadline did."""
        wait = self.limits.max_wait
        bound_by_deadline = False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("the call's deadline passed before the query started")
            if remaining < wait:
                wait, bound_by_deadline = remaining, True
        with self._lock:
            ticket = self._try_locked(claim)
            if ticket is not None:
                return ticket
            reason = self._blocker_locked(claim)
            key = _principal(claim)
            waiting = self._waiting_by_principal.get(key, 0)
            if waiting >= WAITING_PER_SLOT * self.limits.principal_queries:
                self._refused[reason] += 1
                raise self._refusal(reason, claim)
            loop = asyncio.get_running_loop()
            self._seq += 1
            waiter = _Waiter(claim, self._seq, loop, loop.create_future())
            self._waiters.append(waiter)
            self._waiting_by_principal[key] = waiting + 1
            self._queued += 1
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            with self._lock:
                if waiter.ticket is None:
                    self._forget_locked(waiter)
                    reason = self._blocker_locked(claim)
                    self._refused[reason] += 1
            if waiter.ticket is not None:  # admitted as the wait ended
                return waiter.ticket
            if bound_by_deadline:
                raise DeadlineExceeded(
                    "the call's deadline passed while the query waited to be admitted: "
                    + _REASON_TEXT[reason].format(limit=self._limit_of(reason))
                ) from None
            raise self._refusal(reason, claim) from None
        except asyncio.CancelledError:
            with self._lock:
                if waiter.ticket is None:
                    self._forget_locked(waiter)
            if waiter.ticket is not None:
                waiter.ticket.release()
            raise
        assert waiter.ticket is not None
        return waiter.ticket

    @property
    def running(self) -> int:
        """Queries admitted and not yet returned."""
        return self._running

    @property
    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(
                running=self._running,
                waiting=len(self._waiters),
                admitted=self._admitted,
                queued=self._queued,
                refused={reason: self._refused[reason] for reason in REFUSAL_REASONS},
            )

    # -- internals ------------------------------------------------------------------------

    def _limit_of(self, reason: str) -> int:
        if reason == "principal_queries":
            return self.limits.principal_queries
        if reason == "tenant_queries":
            return self.limits.tenant_queries
        return 0

    def _refusal(self, reason: str, claim: Claim) -> ResourceExhausted:
        retry = self.limits.retry_after
        return ResourceExhausted(
            "the query was not admitted: "
            + _REASON_TEXT[reason].format(limit=self._limit_of(reason))
            + f"; retry in {retry:g}s, or run fewer queries at once",
            retry_after=retry,
        )

    def _long_slots(self, capacity: int) -> int:
        return max(1, capacity - self.limits.short_reserve)

    def _blocker_locked(self, claim: Claim) -> str:
        """Why `claim` does not fit now, the memory aside: the first limit it is at;
        "memory" when every slot is free for it."""
        if self._by_principal.get(_principal(claim), 0) >= self.limits.principal_queries:
            return "principal_queries"
        if self._by_tenant.get(claim.tenant, 0) >= self.limits.tenant_queries:
            return "tenant_queries"
        if claim.capacity is not None:
            if self._by_source.get(claim.source, 0) >= claim.capacity:
                return "source_busy"
            if not claim.short and self._long_by_source.get(claim.source, 0) >= self._long_slots(
                claim.capacity
            ):
                return "source_busy"
        return "memory"

    def _try_locked(self, claim: Claim) -> Ticket | None:
        """Admit `claim` if it fits now (its memory charged), else None."""
        if self._blocker_locked(claim) != "memory":
            return None
        within = self.limits.reservations
        memory = claim.memory if within is None else min(claim.memory, within)
        if memory and not self._memory.try_charge("reserved", memory, within=within):
            return None
        _increment(self._by_principal, _principal(claim))
        _increment(self._by_tenant, claim.tenant)
        if claim.capacity is not None:
            _increment(self._by_source, claim.source)
            if not claim.short:
                _increment(self._long_by_source, claim.source)
        self._running += 1
        self._admitted += 1
        return Ticket(self, claim, memory)

    def _forget_locked(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        _decrement(self._waiting_by_principal, _principal(waiter.claim))

    def _grow(self, ticket: Ticket, nbytes: int) -> None:
        with self._lock:
            if ticket._released or nbytes <= ticket._memory:
                return
            more, ticket._memory = nbytes - ticket._memory, nbytes
        self._memory.try_charge("reserved", more, force=True)

    def _return(self, ticket: Ticket, *, slots: bool) -> None:
        claim = ticket.claim
        idle = False
        with self._lock:
            memory, ticket._memory = ticket._memory, 0
            if slots and not ticket._released:
                ticket._released = True
                _decrement(self._by_principal, _principal(claim))
                _decrement(self._by_tenant, claim.tenant)
                if claim.capacity is not None:
                    _decrement(self._by_source, claim.source)
                    if not claim.short:
                        _decrement(self._long_by_source, claim.source)
                self._running -= 1
                idle = self._running == 0
        # Outside the lock: a release calls the budget's listeners, `_pump` among them.
        if memory:
            self._memory.release("reserved", memory)
        else:
            self._pump()
        if idle and self._on_idle is not None:
            self._on_idle()

    def _pump(self) -> None:
        """Admit the waiters that fit now, fairest first (see the module docstring)."""
        woken: list[_Waiter] = []
        with self._lock:
            if not self._waiters:
                return
            skipped: set[int] = set()
            while True:
                best: _Waiter | None = None
                best_key: tuple[int, int, int] | None = None
                for waiter in self._waiters:
                    if waiter.seq in skipped or self._blocker_locked(waiter.claim) != "memory":
                        continue
                    if waiter.future.done():  # cancelled: its task forgets it
                        continue
                    key = (
                        self._by_principal.get(_principal(waiter.claim), 0),
                        self._by_tenant.get(waiter.claim.tenant, 0),
                        waiter.seq,
                    )
                    if best_key is None or key < best_key:
                        best, best_key = waiter, key
                if best is None:
                    break
                ticket = self._try_locked(best.claim)
                if ticket is None:  # no memory for it: the others may need less
                    skipped.add(best.seq)
                    continue
                best.ticket = ticket
                self._forget_locked(best)
                woken.append(best)
        for waiter in woken:
            waiter.loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: _Waiter) -> None:
    if not waiter.future.done():
        waiter.future.set_result(None)


def _increment(counts: dict[K, int], key: K) -> None:
    counts[key] = counts.get(key, 0) + 1


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
