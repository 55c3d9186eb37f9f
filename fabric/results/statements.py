"""Open statements: the server side of the paging (cursor) API.

A statement holds what a paged query needs between two fetches (its source reader,
parameters, rows buffered but not yet sent) as an opaque ``payload`` plus a ``close_fn``
that releases it. The registry's job is to make sure that state lives no longer than it
must: it is released when the caller closes the statement, when the caller has consumed
it (``exhausted`` at the end of a lease), when its connection is purged, when access it
was opened under is revoked, and once it has been idle for ``idle_limit`` (default 5
minutes).

Idle limit: a fetch checks it itself (``get`` and ``lease``): a statement idle for the
limit or longer is released and is not found, whenever the sweeper last ran. The sweeper
only reclaims the memory of statements nobody asks for again.

Revocation: ``revoke_where`` releases the statements whose payload is no longer allowed
and keeps, for each, the error the caller gets at its next fetch (the same tenant and
stage only; anyone else gets ``NotFound``). Those markers hold no payload and are
dropped once reported, and by the sweeper after ``idle_limit``.

Shares: at most ``max_open`` statements are open in the gateway, ``max_per_tenant`` per
tenant and ``max_per_principal`` per principal of a tenant, so one app cannot take the
statements every app shares. One more is refused with ``ResourceExhausted`` and a retry
hint (after idle statements were swept), counted by which share was full.

Idleness: a statement is swept after ``idle_limit``, or after its own ``idle_limit`` when
it has one (a statement still holding a source connection is given a shorter one).

Isolation: a statement is found only with the tenant and stage that opened it. Any other
(tenant, stage) gets the same ``NotFound`` as an unknown id, so ids reveal nothing.

Fetches in progress: ``lease()`` marks a statement busy for the duration of a fetch.
The sweeper skips busy statements (idleness counts from the end of the last fetch), and a
second concurrent fetch is refused. ``close()`` of a busy statement removes it at once
(no new fetch can find it) but defers ``close_fn`` to the end of the running fetch, so
the source is never closed under a thread still reading it.

Ownership: ``open()`` takes ownership of the payload. If it cannot register the statement
(``ResourceExhausted``), it calls ``close_fn`` before raising, so callers never leak a
running source query.

Thread-safe (``threading.Lock``); ``close_fn`` always runs outside the lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from fabric.clock import SYSTEM_CLOCK, Clock
from fabric.errors import FabricError, FailedPrecondition, NotFound, ResourceExhausted

__all__ = ["STATEMENT_SHARES", "OpenStatement", "StatementRegistry", "StatementStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_FOUND = "statement not found: it was closed, consumed or expired; run the query again"


@dataclass(frozen=True, slots=True)
class _Revoked:
    """What is left of a revoked statement: who may hear why, and why."""

    tenant: str
    stage: str
    error: FabricError
    at: float


class OpenStatement(Generic[T]):
    """One open statement. Fields other than ``rows_sent`` and ``exhausted`` belong to
    the registry; the fetch that holds the lease updates those two."""

    __slots__ = (
        "_close_fn",
        "_payload",
        "_released",
        "_removed",
        "busy",
        "connection",
        "created",
        "exhausted",
        "id",
        "idle_limit",
        "last_used",
        "principal",
        "rows_sent",
        "stage",
        "tenant",
    )

    def __init__(
        self,
        *,
        id: str,
        tenant: str,
        stage: str,
        principal: str,
        connection: str,
        now: float,
        payload: T,
        close_fn: Callable[[], None],
    ) -> None:
        self.id = id
        self.tenant = tenant
        self.stage = stage
        self.principal = principal
        self.connection = connection
        self.created = now
        self.last_used = now
        self.rows_sent = 0
        self.exhausted = False
        self.idle_limit: float | None = None
        """Its own idle limit (None: the registry's); the fetch holding the lease sets it."""
        self.busy = False
        self._payload: T | None = payload
        self._close_fn: Callable[[], None] | None = close_fn
        self._removed = False  # no longer in the registry
        self._released = False  # payload and close_fn dropped

    @property
    def payload(self) -> T:
        """The statement's state; ``NotFound`` once released."""
        if self._released:
            raise NotFound(_NOT_FOUND)
        return self._payload  # type: ignore[return-value]  # T itself may include None

    @property
    def closed(self) -> bool:
        return self._removed

    def _release(self) -> Callable[[], None] | None:
        """Drop the payload and hand back close_fn (once); called under the registry lock."""
        if self._released:
            return None
        self._released = True
        close_fn = self._close_fn
        self._payload = None
        self._close_fn = None
        return close_fn

    def __repr__(self) -> str:
        # No id: it is the handle a caller presents; no payload: it may hold rows.
        return (
            f"OpenStatement(tenant={self.tenant!r}, stage={self.stage!r}, "
            f"connection={self.connection!r}, rows_sent={self.rows_sent}, "
            f"exhausted={self.exhausted}, busy={self.busy}, closed={self._removed})"
        )


@dataclass(frozen=True, slots=True)
class StatementStats:
    open: int
    opened: int
    closed: int
    """Statements removed by any path (close, consumed, sweep, connection purge, close_all)."""
    purged_idle: int
    """Of those, removed for idleness (by the sweeper, or by a fetch that came too late)."""
    revoked: int
    """Of those, removed because access they were opened under was revoked."""
    close_errors: int
    """``close_fn`` calls that raised (the statement was removed anyway)."""
    refused: dict[str, int]
    """Opens refused, by the share that was full: ``gateway``, ``tenant``, ``principal``."""


STATEMENT_SHARES = ("gateway", "tenant", "principal")
RETRY_AFTER = 5.0
"""The retry hint of a refused open, in seconds: statements close as callers page to the
end, close them, or leave them idle."""


def _run_close(close_fn: Callable[[], None] | None) -> bool:
    """Call ``close_fn``; False if it raised. Logs the exception type only: messages of
    driver errors can echo parameter values."""
    if close_fn is None:
        return True
    try:
        close_fn()
    except Exception as exc:
        log.warning(
            "releasing an open statement failed (%s); it was removed anyway",
            type(exc).__name__,
        )
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Expiry:
    """A statement a fetch found idle past the limit: its release, still to run."""

    close_fn: Callable[[], None] | None
    limit: float
    """The idle limit it passed."""


K = TypeVar("K", str, tuple[str, str])


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class StatementRegistry(Generic[T]):
    """The open statements of one gateway; see the module docstring."""

    def __init__(
        self,
        *,
        idle_limit: float = 300.0,
        max_open: int = 1000,
        max_per_tenant: int | None = None,
        max_per_principal: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if idle_limit <= 0:
            raise ValueError("idle_limit must be positive")
        if max_open <= 0:
            raise ValueError("max_open must be positive")
        self._idle_limit = idle_limit
        self._max_open = max_open
        self._max_per_tenant = max_per_tenant or max_open
        self._max_per_principal = max_per_principal or self._max_per_tenant
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, OpenStatement[T]] = {}
        self._revoked: dict[str, _Revoked] = {}
        self._opened = self._closed = self._purged_idle = self._close_errors = 0
        self._revoked_count = 0
        self._by_tenant: Counter[str] = Counter()
        self._by_principal: Counter[tuple[str, str]] = Counter()
        self._refused: Counter[str] = Counter()

    @property
    def idle_limit(self) -> float:
        return self._idle_limit

    @property
    def max_open(self) -> int:
        return self._max_open

    def open(
        self,
        *,
        tenant: str,
        stage: str,
        principal: str,
        payload: T,
        close_fn: Callable[[], None],
        connection: str = "",
    ) -> OpenStatement[T]:
        """Register a statement; the registry now owns ``payload`` (see module docstring).

        ``ResourceExhausted`` (with a retry hint) if the gateway's, the tenant's or the
        principal's share is full after sweeping idle statements.
        """
        full = "gateway"
        for attempt in range(2):
            with self._lock:
                full = self._full_share(tenant, principal)
                if not full:
                    statement_id = secrets.token_urlsafe(24)
                    while statement_id in self._open:  # 192 random bits; belt and braces
                        statement_id = secrets.token_urlsafe(24)
                    statement = OpenStatement(
                        id=statement_id,
                        tenant=tenant,
                        stage=stage,
                        principal=principal,
                        connection=connection,
                        now=self._clock.monotonic(),
                        payload=payload,
                        close_fn=close_fn,
                    )
                    self._open[statement_id] = statement
                    self._by_tenant[tenant] += 1
                    self._by_principal[(tenant, principal)] += 1
                    self._opened += 1
                    return statement
            if attempt == 0:
                self.sweep()
        closed = _run_close(close_fn)
        with self._lock:
            self._refused[full] += 1
            if not closed:
                self._close_errors += 1
        raise self._refusal(full)

    def refusal_for(
        self, *, tenant: str, principal: str, count: bool = False
    ) -> ResourceExhausted | None:
        """What ``open`` would refuse this caller with now (counted when ``count``), or
        None; no sweep. The engine asks before it runs a query, so that a caller whose
        share is full does not make a source run a query only to have it dropped."""
        with self._lock:
            full = self._full_share(tenant, principal)
            if not full:
                return None
            if count:
                self._refused[full] += 1
        return self._refusal(full)

    def _refusal(self, full: str) -> ResourceExhausted:
        limit = {
            "gateway": self._max_open,
            "tenant": self._max_per_tenant,
            "principal": self._max_per_principal,
        }[full]
        owner = {"gateway": "the gateway", "tenant": "this tenant", "principal": "this caller"}
        return ResourceExhausted(
            f"too many open statements for {owner[full]} (limit {limit}); close statements "
            f"you no longer need or read them to the end, then retry in {RETRY_AFTER:g}s",
            retry_after=RETRY_AFTER,
        )

    def _full_share(self, tenant: str, principal: str) -> str:
        """The share a new statement would exceed (lock held); "" when none is full."""
        if len(self._open) >= self._max_open:
            return "gateway"
        if self._by_tenant[tenant] >= self._max_per_tenant:
            return "tenant"
        if self._by_principal[(tenant, principal)] >= self._max_per_principal:
            return "principal"
        return ""

    def get(self, statement_id: str, *, tenant: str, stage: str) -> OpenStatement[T]:
        """The statement, its idle time reset. ``NotFound`` if unknown, closed, expired,
        or opened by another tenant or stage (the same error in every case); the
        revocation's error once for a revoked one."""
        with self._lock:
            statement = self._find(statement_id, tenant, stage)
            expired = self._expire_if_idle(statement)
            if expired is None:
                statement.last_used = self._clock.monotonic()
                return statement
        raise self._expired(expired)

    @contextmanager
    def lease(self, statement_id: str, *, tenant: str, stage: str) -> Iterator[OpenStatement[T]]:
        """Hold the statement for one fetch: not swept while held, not closed under it.

        ``NotFound`` as ``get`` (an expired statement is released here); the revocation's
        error once for a revoked one; ``FailedPrecondition`` if a fetch is already running.
        At the end, idleness restarts; if the fetch set ``exhausted``, or the statement was
        closed meanwhile, it is released now. A fetch that raises leaves the statement
        open: the caller decides whether to close it.
        """
        with self._lock:
            statement = self._find(statement_id, tenant, stage)
            if statement.busy:
                raise FailedPrecondition(
                    "a fetch on this statement is already in progress; wait for it to finish"
                )
            expired = self._expire_if_idle(statement)
            if expired is None:
                statement.busy = True
                statement.last_used = self._clock.monotonic()
        if expired is not None:
            raise self._expired(expired)
        try:
            yield statement
        finally:
            close_fn: Callable[[], None] | None = None
            with self._lock:
                statement.busy = False
                statement.last_used = self._clock.monotonic()
                if statement.exhausted and not statement._removed:
                    self._remove(statement)
                if statement._removed:
                    close_fn = statement._release()
            self._finish_close(close_fn)

    def close(
        self, statement_id: str, *, tenant: str, stage: str, missing_ok: bool = False
    ) -> None:
        """Close the statement and release its payload (deferred to the end of a running
        fetch). ``NotFound`` as ``get`` unless ``missing_ok``."""
        with self._lock:
            try:
                statement = self._find(statement_id, tenant, stage)
            except NotFound:
                if missing_ok:
                    return
                raise
            self._remove(statement)
            close_fn = None if statement.busy else statement._release()
        self._finish_close(close_fn)

    def sweep(self) -> int:
        """Close statements idle for ``idle_limit`` or longer (busy ones are not idle), and
        forget revocations nobody asked about for that long."""
        now = self._clock.monotonic()
        with self._lock:
            for statement_id in [
                k for k, r in self._revoked.items() if now - r.at >= self._idle_limit
            ]:
                del self._revoked[statement_id]
            idle = [
                s
                for s in self._open.values()
                if not s.busy
                and now - s.last_used
                >= (self._idle_limit if s.idle_limit is None else s.idle_limit)
            ]
            close_fns = []
            for statement in idle:
                self._remove(statement)
                close_fns.append(statement._release())
            self._purged_idle += len(idle)
        for close_fn in close_fns:
            self._finish_close(close_fn)
        return len(idle)

    def revoke_where(self, error_of: Callable[[T], FabricError | None]) -> int:
        """Release every statement whose payload `error_of` refuses (returns the error its
        caller gets at the next fetch); returns how many. A busy statement is removed now
        and released when its running fetch ends."""
        now = self._clock.monotonic()
        with self._lock:
            doomed: list[tuple[OpenStatement[T], FabricError]] = []
            for statement in self._open.values():
                if statement._released:
                    continue
                error = error_of(statement._payload)  # type: ignore[arg-type]
                if error is not None:
                    doomed.append((statement, error))
            close_fns = []
            for statement, error in doomed:
                self._remove(statement)
                self._revoked[statement.id] = _Revoked(
                    statement.tenant, statement.stage, error, now
                )
                if not statement.busy:
                    close_fns.append(statement._release())
            while len(self._revoked) > self._max_open:
                del self._revoked[next(iter(self._revoked))]
            self._revoked_count += len(doomed)
        for close_fn in close_fns:
            self._finish_close(close_fn)
        return len(doomed)

    def count_connection(self, tenant: str, connection: str) -> int:
        """How many statements of `connection` are open (what purging it would close)."""
        with self._lock:
            return sum(
                1 for s in self._open.values() if s.tenant == tenant and s.connection == connection
            )

    def close_connection(self, tenant: str, connection: str) -> int:
        """Close every statement of a purged connection; returns the number closed."""
        return self._close_where(lambda s: s.tenant == tenant and s.connection == connection)

    def close_all(self) -> int:
        """Close every statement (shutdown); returns the number closed."""
        return self._close_where(lambda s: True)

    async def run_sweeper(self, interval: float) -> None:
        """Sweep every ``interval`` seconds until cancelled. Sweeps run in a worker thread
        because ``close_fn`` may block (closing a source cursor)."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # keep sweeping: stopping would let state pile up
                log.warning("statement sweep failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval)

    @property
    def stats(self) -> StatementStats:
        with self._lock:
            return StatementStats(
                open=len(self._open),
                opened=self._opened,
                closed=self._closed,
                purged_idle=self._purged_idle,
                revoked=self._revoked_count,
                close_errors=self._close_errors,
                refused={share: self._refused[share] for share in STATEMENT_SHARES},
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    # -- internals ------------------------------------------------------------------------

    def _find(self, statement_id: str, tenant: str, stage: str) -> OpenStatement[T]:
        statement = self._open.get(statement_id)
        if statement is None or statement.tenant != tenant or statement.stage != stage:
            revoked = self._revoked.get(statement_id)
            if revoked is not None and (revoked.tenant, revoked.stage) == (tenant, stage):
                del self._revoked[statement_id]
                raise revoked.error
            raise NotFound(_NOT_FOUND)
        return statement

    def _expire_if_idle(self, statement: OpenStatement[T]) -> _Expiry | None:
        """The idle limit, checked by the fetch itself (lock held, `statement` not busy): a
        statement idle for the limit or longer is removed, whenever the sweeper last
        ran; its release is returned, to run outside the lock."""
        limit = self._idle_limit if statement.idle_limit is None else statement.idle_limit
        if self._clock.monotonic() - statement.last_used < limit:
            return None
        self._remove(statement)
        self._purged_idle += 1
        return _Expiry(statement._release(), limit)

    def _expired(self, expiry: _Expiry) -> NotFound:
        self._finish_close(expiry.close_fn)
        return NotFound(
            f"statement expired: it was idle for {expiry.limit:g} s or more and was "
            "closed; run the query again"
        )

    def _remove(self, statement: OpenStatement[T]) -> None:
        """Unregister (lock held); the payload is released by the caller, now or after
        the running fetch."""
        del self._open[statement.id]
        statement._removed = True
        self._closed += 1
        _decrement(self._by_tenant, statement.tenant)
        _decrement(self._by_principal, (statement.tenant, statement.principal))

    def _close_where(self, predicate: Callable[[OpenStatement[T]], bool]) -> int:
        with self._lock:
            doomed = [s for s in self._open.values() if predicate(s)]
            close_fns = []
            for statement in doomed:
                self._remove(statement)
                if not statement.busy:
                    close_fns.append(statement._release())
        for close_fn in close_fns:
            self._finish_close(close_fn)
        return len(doomed)

    def _finish_close(self, close_fn: Callable[[], None] | None) -> None:
        if not _run_close(close_fn):
            with self._lock:
                self._close_errors += 1
