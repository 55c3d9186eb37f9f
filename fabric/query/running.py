"""The queries running on one engine, as an administrator sees them, and their cancellation.

Every Execute stream and every OpenStatement call is registered when it starts and
removed in a `finally` when it ends (`QueryList.track`), so the list is exactly what runs
now. An entry holds who runs what (tenant, stage, principal, connection, protocol), the
SQL's shape (its text with every literal masked, computed only when listed: never a
parameter value or a literal), its fingerprint once compiled, its phase, rows sent so far
and when it started. The list is bounded (`max_entries`): past it a query runs untracked
(counted) rather than being refused for the sake of observability.

Cancelling a query cancels the asyncio task that runs it, the very thing gRPC does when a
client cancels and the replica does when its forwarder sends CANCEL: the engine's own
clean-up then stops the query at its source (`stop_run`, the connector's `cancel`) and
gives back its admission. The engine turns that cancellation into `Cancelled` for the
caller (`cancelled_here`). Thread-safe; the cancellation itself runs on the loop of the
task (`call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fabric.context import RequestContext
from fabric.errors import InvalidArgument
from fabric.observability.logging import mask_literals, shorten

__all__ = ["DEFAULT_MAX_ENTRIES", "QueryList", "RunningQuery", "RunningQueryView"]

DEFAULT_MAX_ENTRIES = 10_000
"""Queries one engine lists at most; more run untracked (and are counted)."""
ID_SEPARATOR = ":"
"""Between the replica and the query's own part of an id (`<replica>:<16 hex>`); never in
a replica id (a bus token), so the replica that runs a query is read from its id."""

_REPLICA = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""A replica id as the bus takes it (one subject token)."""

PHASE_COMPILING = "compiling"
PHASE_WAITING = "waiting"
"""Waiting for admission (a slot at its source, the caller's share, memory)."""
PHASE_RUNNING = "running"


@dataclass(frozen=True, slots=True)
class RunningQueryView:
    """One running query as listed: metadata only, never a value."""

    id: str
    request_id: str
    tenant: str
    stage: str
    principal: str
    connection: str
    sql_shape: str
    fingerprint: str
    protocol: str
    kind: str
    phase: str
    started_at: float
    """Wall clock (seconds since the epoch)."""
    elapsed: float
    """Seconds since it started."""
    rows: int
    replica: str


class RunningQuery:
    """One registered query; its fields change as it runs (from its own task only)."""

    __slots__ = (
        "__weakref__",
        "_rows_of",
        "_sql",
        "cancelled",
        "connection",
        "ctx",
        "fingerprint",
        "id",
        "kind",
        "loop",
        "phase",
        "protocol",
        "request_id",
        "started",
        "started_at",
        "task",
    )

    def __init__(
        self,
        query_id: str,
        ctx: RequestContext,
        connection: str,
        sql: str,
        protocol: str,
        kind: str,
        request_id: str,
    ) -> None:
        self.id = query_id
        self.ctx = ctx
        self.connection = connection
        self._sql = sql
        self.protocol = protocol
        self.kind = kind
        self.request_id = request_id
        self.fingerprint = ""
        self.phase = PHASE_COMPILING
        self.started_at = time.time()
        self.started = time.monotonic()
        self.cancelled = False
        self._rows_of: object = None
        self.task: asyncio.Task[object] | None = asyncio.current_task()
        self.loop = asyncio.get_running_loop()

    def counting(self, run: object) -> None:
        """Rows so far are read from `run` (a `SourceRun`: its `rows`) from now on."""
        self._rows_of = run

    @property
    def rows(self) -> int:
        rows = getattr(self._rows_of, "rows", 0)
        return rows if isinstance(rows, int) else 0

    def view(self, replica: str) -> RunningQueryView:
        return RunningQueryView(
            id=self.id,
            request_id=self.request_id,
            tenant=self.ctx.tenant,
            stage=self.ctx.stage,
            principal=shorten(self.ctx.principal),
            connection=shorten(self.connection),
            sql_shape=mask_literals(self._sql),
            fingerprint=self.fingerprint,
            protocol=self.protocol,
            kind=self.kind,
            phase=self.phase,
            started_at=self.started_at,
            elapsed=max(0.0, time.monotonic() - self.started),
            rows=self.rows,
            replica=replica,
        )


class QueryList:
    """The running queries of one engine (see the module docstring)."""

    def __init__(self, replica: str = "local", *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.replica = _replica_token(replica)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, RunningQuery] = {}
        self._cancelled_tasks: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()
        self.untracked = 0
        self.cancelled = 0

    def rename(self, replica: str) -> None:
        """The replica id this engine's queries are listed under (set once the process
        knows it, before it serves)."""
        self.replica = _replica_token(replica)

    @contextmanager
    def track(
        self,
        ctx: RequestContext,
        connection: str,
        sql: str,
        *,
        protocol: str,
        kind: str,
        request_id: str = "",
    ) -> Iterator[RunningQuery | None]:
        """Register a query for the duration of the block (None when the list is full);
        must be entered in the task that runs the query."""
        entry = self._register(ctx, connection, sql, protocol, kind, request_id)
        try:
            yield entry
        finally:
            if entry is not None:
                with self._lock:
                    self._entries.pop(entry.id, None)

    def _register(
        self,
        ctx: RequestContext,
        connection: str,
        sql: str,
        protocol: str,
        kind: str,
        request_id: str,
    ) -> RunningQuery | None:
        query_id = f"{self.replica}{ID_SEPARATOR}{secrets.token_hex(8)}"
        entry = RunningQuery(query_id, ctx, connection, sql, protocol, kind, request_id)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self.untracked += 1
                return None
            self._entries[query_id] = entry
        return entry

    def list(self, tenant: str, stage: str | None = None) -> list[RunningQueryView]:
        """The tenant's running queries (of one stage when given), oldest first."""
        with self._lock:
            entries = [
                e
                for e in self._entries.values()
                if e.ctx.tenant == tenant and (stage is None or e.ctx.stage == stage)
            ]
        entries.sort(key=lambda e: e.started)
        return [e.view(self.replica) for e in entries]

    def cancel(self, query_id: str, tenant: str) -> bool:
        """Cancel the tenant's query `query_id`; False when no such query runs here (ended
        already, another tenant's, never here). The cancellation runs on the query's
        loop; the query ends with `Cancelled` once its source has been stopped."""
        with self._lock:
            entry = self._entries.get(query_id)
            if entry is None or entry.ctx.tenant != tenant or entry.task is None:
                return False
            entry.cancelled = True
            self.cancelled += 1
        entry.loop.call_soon_threadsafe(self._cancel_task, entry)
        return True

    def _cancel_task(self, entry: RunningQuery) -> None:
        """On the query's loop: cancel its task if the query still runs (once it has
        left the list, its task has moved on to other work that must not be hit)."""
        with self._lock:
            if self._entries.get(entry.id) is not entry:
                return
            task = entry.task
        if task is not None and not task.done():
            self._cancelled_tasks.add(task)
            task.cancel()

    def cancelled_here(self, task: asyncio.Task[object] | None) -> bool:
        """Whether `task` was cancelled by `cancel` (not by its caller going away); the
        mark is taken off, and the task's cancellation request with it, so the task can
        report the cancellation instead of being torn down by it."""
        if task is None or task not in self._cancelled_tasks:
            return False
        self._cancelled_tasks.discard(task)
        task.uncancel()
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            running = len(self._entries)
        return {
            "running_queries": float(running),
            "running_queries_untracked": float(self.untracked),
            "running_queries_cancelled": float(self.cancelled),
        }


def replica_of(query_id: str) -> str | None:
    """The replica part of a running query's id, or None when the id is malformed."""
    replica, sep, own = query_id.rpartition(ID_SEPARATOR)
    if not sep or not replica or len(own) != 16:
        return None
    if not _REPLICA.fullmatch(replica):
        return None
    try:
        int(own, 16)
    except ValueError:
        return None
    return replica


def _replica_token(replica: str) -> str:
    if not _REPLICA.fullmatch(replica):
        raise InvalidArgument(
            f"replica id {replica!r} must be 1 to 128 letters, digits, '_' or '-'"
        )
    return replica
