"""The query engine: a query's life from SQL text to Arrow IPC messages.

resolve the connection -> compile (or hit the statement cache) -> bind -> result cache
(identical queries in flight run once) -> admission to the source's lane -> run at the
source in one of the lane's threads -> encode IPC messages there too, one batch ahead of
the caller -> fill the cache while streaming.

The event loop never blocks on a driver. Each source (connector) has its own lane
(`fabric.query.lanes`): as many queries at once as its pool has connections, the rest
waiting on the loop (bounded by the source's pool timeout and the call's deadline),
and as many threads for their driver calls, so one source that stops answering holds
only its own threads and never delays another source's queries. A statement the
compiler proved returns a handful of rows (a lookup by primary key) may be run by its
connector from the loop without blocking it (`Connector.execute_small`: PostgreSQL waits
on its socket through the loop), saving the two thread hops that cost more than such a
query. Resolving a connection (metadata store, secret store, building a connector) runs
in the engine's general worker pool unless the catalog version is known without I/O.

A query's timeout (FABRIC_QUERY_TIMEOUT, or the caller's sooner deadline) bounds the
call whatever the source does: past it (and a short grace for the source's own report)
the caller gets DeadlineExceeded at once, and the query is stopped and its connection
cut off and discarded in the background. Stopping and releasing queries (a caller that
goes away, an early stop, a closed statement) runs on the control lane
(`connectors.workers.CONTROL`), never behind new work, and a start whose caller has gone
does not run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import Executor, Future
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from connectors import QueryHandle
from connectors.workers import CONTROL, WorkerThreads, call_quietly
from fabric.catalog.metadata.store import MetadataStore
from fabric.clock import SYSTEM_CLOCK, Clock, elapsed_us
from fabric.config import Settings
from fabric.context import RequestContext
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    InvalidArgument,
    NotFound,
    QueryRejected,
)
from fabric.observability.logging import MAX_LOGGED_PARAMS, mask_literals, shorten
from fabric.observability.metrics import GatewayMetrics
from fabric.query.compiler import CompiledStatement, QueryLimits, StatementCompiler
from fabric.query.lanes import Lanes, Ticket, awaitable
from fabric.query.runs import (
    Budget,
    PagedResult,
    PendingStart,
    SourceRun,
    Summary,
    cached_pager,
)
from fabric.query.sources import (
    BoundSource,
    ConnectorFactory,
    SecretResolver,
    SourceRegistry,
    default_connector_factory,
    no_secret_store,
)
from fabric.query.statement_cache import StatementCache
from fabric.results.cache import ResultBuilder, ResultCache, ResultKey
from fabric.results.ipc import open_ipc_stream
from fabric.results.statements import StatementRegistry

log = logging.getLogger(__name__)

INLINE_COMPILE_LENGTH = 1_000
"""Characters of SQL compiled on the event loop: a text this short compiles in a few
milliseconds; a longer one compiles in a thread of its own pool."""
COMPILE_THREADS = 2
T = TypeVar("T")
SMALL_RESULT_ROWS = 64
"""Statements proven to return at most this many rows are offered to the connector's
`execute_small` (run from the event loop) before a worker thread."""
DEADLINE_GRACE = 0.5
"""Seconds past a query's deadline the engine still waits for its source to report the
timeout itself (with the connection settled) before ending the call on its own."""
STOP_WAIT = 5.0
"""Seconds a call that ends early waits for its query to be stopped and released
before it returns anyway (the stop goes on in the background)."""
PENDING_READ_WAIT = 5.0
"""Seconds the stop of a query waits for a read still running in its lane before it
closes the query under it (the read then fails and lets go)."""
CLOSE_WAIT = 10.0
"""Seconds `close` waits for stops still running in the background."""
_ENTITY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class QueryRequest:
    connection: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    cache_ttl: float = 0.0
    """Seconds the result may be served from memory; 0 = not cached."""
    max_rows: int | None = None
    """Rows the caller wants at most; None = the configured cap."""

    def __repr__(self) -> str:
        # Parameter values stay out of logs and tracebacks; names are fine.
        return (
            f"QueryRequest(connection={self.connection!r}, params=<{sorted(self.params)}>, "
            f"cache_ttl={self.cache_ttl}, max_rows={self.max_rows})"
        )


@dataclass(frozen=True, slots=True)
class Page:
    statement_id: str
    arrow_ipc: bytes
    rows: int
    done: bool
    summary: Summary | None


class QueryEngine:
    def __init__(
        self,
        store: MetadataStore,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        secrets: SecretResolver = no_secret_store,
        connector_factory: ConnectorFactory = default_connector_factory,
    ) -> None:
        self.settings = settings
        self.store = store
        # Resolving connections and reading cached pages; source work runs in lanes.
        self.executor: Executor = WorkerThreads(settings.worker_threads, name="fabric")
        self.lanes = Lanes(settings.worker_threads)
        self.sources = SourceRegistry(
            store, secrets=secrets, connector_factory=connector_factory, closer=self._in_background
        )
        limits = QueryLimits(
            max_length=settings.max_sql_length,
            max_tokens=settings.max_sql_tokens,
            max_depth=settings.max_query_depth,
            max_chain=settings.max_query_chain,
            max_parts=settings.max_query_parts,
        )
        self.statements = StatementCache(StatementCompiler(limits), settings.compiled_statements)
        # Compiles of long texts, apart from the source work in `executor` so they never
        # wait behind a slow source, nor hold its threads.
        self._compile_executor = WorkerThreads(COMPILE_THREADS, name="fabric-compile")
        self.results = ResultCache(
            max_bytes=settings.cache_max_bytes, max_ttl=settings.cache_max_ttl, clock=clock
        )
        self.open_statements: StatementRegistry[PagedResult] = StatementRegistry(
            idle_limit=settings.statement_idle_limit,
            max_open=settings.max_open_statements,
            clock=clock,
        )
        self._inflight: dict[ResultKey, asyncio.Event] = {}
        self._purged = {"connection_purged": 0, "compiled_purged": 0}
        self._coalesced = 0
        self._overruns = 0
        self._stopping: set[Future[None]] = set()
        self._stopping_lock = threading.Lock()
        self.metrics = GatewayMetrics(self.snapshot)
        self.metrics.add_snapshot(self.snapshot_lanes)

    # -- plumbing -------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await awaitable(self.executor.submit(fn, *args))

    def _budget(self, deadline: float | None) -> Budget:
        """The query's time: the configured limit or the caller's sooner deadline."""
        if deadline is None:
            return Budget.of(self.settings.query_timeout)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before the query started")
        return Budget.of(min(self.settings.query_timeout, remaining))

    async def _bounded(self, future: Future[T], budget: Budget) -> T:
        """The outcome of a source call, waited for until the query's budget is spent
        (and a short grace); past it, DeadlineExceeded at once. The call itself is left
        to its thread: the caller's cleanup stops it."""
        try:
            async with asyncio.timeout(budget.until + DEADLINE_GRACE - time.monotonic()):
                return await awaitable(future)
        except TimeoutError:
            self._overruns += 1
            raise budget.overrun() from None

    def _in_background(self, fn: Callable[[], object]) -> Future[None]:
        """Run a stop or release on the control lane, tracked until it ends."""
        future = CONTROL.submit(call_quietly, fn)
        self._track(future)
        return future

    def _track(self, future: Future[None]) -> None:
        with self._stopping_lock:
            self._stopping.add(future)
        future.add_done_callback(self._stopped)

    def _stopped(self, future: Future[None]) -> None:
        with self._stopping_lock:
            self._stopping.discard(future)

    async def _settled(self, stopping: Future[None], budget: Budget | None) -> None:
        """Wait (at most STOP_WAIT) for a stop, unless the caller is out of time: a
        caller whose deadline has passed gets its answer now."""
        if budget is not None and budget.expired:
            return
        await asyncio.wait({awaitable(stopping)}, timeout=STOP_WAIT)

    def settle(self, timeout: float) -> bool:
        """Wait until every stop running in the background has ended (at most
        `timeout`); whether they all did."""
        with self._stopping_lock:
            pending = set(self._stopping)
        if not pending:
            return True
        _, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def _max_rows(self, requested: int | None) -> int:
        cap = self.settings.max_rows
        if requested is None:
            return cap
        if requested <= 0:
            raise InvalidArgument("max_rows must be positive (or unset for the gateway's cap)")
        return min(requested, cap)

    def _ttl(self, requested: float) -> float:
        if requested < 0:
            raise InvalidArgument("cache_ttl must not be negative")
        return min(requested, self.settings.cache_max_ttl)

    async def _source(self, ctx: RequestContext, connection: str) -> BoundSource:
        """The connection's source, from memory when it is known current without I/O;
        otherwise resolved in a worker thread (metadata store, secret store, connector)."""
        if not connection:
            raise InvalidArgument("connection is required")
        bound = self.sources.current(ctx.tenant, connection, ctx.stage)
        if bound is None:
            bound = await self._blocking(self.sources.resolve, ctx.tenant, connection, ctx.stage)
        return bound

    async def _compile(
        self, ctx: RequestContext, request: QueryRequest, max_rows: int
    ) -> tuple[BoundSource, CompiledStatement, tuple[Any, ...]]:
        # An over-long text is refused before the connection is resolved or the text is
        # hashed, tokenized or logged.
        self.statements.compiler.check_length(request.sql)
        bound = await self._source(ctx, request.connection)
        connector = bound.connector
        key: dict[str, Any] = {
            "tenant": ctx.tenant,
            "connection": request.connection,
            "sql": request.sql,
            "catalog": bound.catalog,
            "dialect": connector.dialect,
            "param_style": connector.param_style,
            "max_rows": max_rows,
        }
        compiled = self.statements.lookup(**key)
        if compiled is None:
            compile_statement = functools.partial(self.statements.get_or_compile, **key)
            if len(request.sql) <= INLINE_COMPILE_LENGTH:
                compiled = compile_statement()
            else:
                # A long text may take a parse of tenths of a second even within the
                # query limits; the event loop keeps serving other calls meanwhile. A
                # caller gone before the compile starts cancels it.
                loop = asyncio.get_running_loop()
                compiled = await loop.run_in_executor(self._compile_executor, compile_statement)
        return bound, compiled, compiled.bind(request.params)

    def _open_run(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        budget: Budget,
        builder: ResultBuilder | None,
        ticket: Ticket,
    ) -> SourceRun:
        """Start the query at its source (blocking; in a thread of its lane)."""
        handle = bound.connector.execute(
            compiled.sql, args, timeout=budget.remaining(), batch_rows=self.settings.batch_rows
        )
        return self._new_run(handle, compiled, builder, budget, ticket)

    def _new_run(
        self,
        handle: QueryHandle,
        compiled: CompiledStatement,
        builder: ResultBuilder | None,
        budget: Budget,
        ticket: Ticket,
    ) -> SourceRun:
        try:
            return SourceRun(
                handle,
                compiled.max_rows,
                self.settings.max_message_bytes,
                builder,
                budget=budget,
                submit=ticket.submit,
                release=ticket.release,
            )
        except BaseException:
            handle.close()
            ticket.release()
            raise

    async def _begin(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        builder: ResultBuilder | None,
        *,
        read_first: bool,
    ) -> tuple[SourceRun, list[bytes]]:
        """Admit the query to its source's lane, start it and, with `read_first`, read
        its first messages in the same thread call: a small result is whole (and its
        source closed) after one thread hop. A caller that goes away (or runs out of
        time) while the start runs gets its answer at once; the start is stopped in
        the background, or never runs if it has not begun."""
        budget = self._budget(deadline)
        ticket = await self.lanes.of(bound.connector).admit(budget.until)
        if read_first and args and compiled.row_bound <= SMALL_RESULT_ROWS:
            # A lookup by key: the connector may run it from the event loop, which saves
            # the two thread hops that cost more than the query itself.
            try:
                handle = await bound.connector.execute_small(
                    compiled.sql, args, timeout=budget.remaining(), max_rows=compiled.row_bound
                )
            except BaseException:
                ticket.release()
                raise
            if handle is not None:
                run = self._new_run(handle, compiled, builder, budget, ticket)
                try:
                    first = [run.header()]
                    if handle.buffered:  # in memory: reading it is a few microseconds
                        first.extend(run.read_messages(self.settings.max_message_bytes) or ())
                except BaseException:
                    run.close()
                    raise
                return run, first
        start = PendingStart()

        def run_start() -> tuple[SourceRun, list[bytes]]:
            try:
                if not start.begin():
                    raise Cancelled("the caller went away before the query started")
                run = self._open_run(bound, compiled, args, budget, builder, ticket)
            except BaseException:
                ticket.release()
                raise
            if not start.opened(run):
                run.cancel()
                run.close()
                raise Cancelled("the caller went away while the query started")
            if not read_first:
                return run, []
            try:
                first = [run.header()]
                first.extend(run.read_messages(self.settings.max_message_bytes) or ())
            except BaseException:
                # A source that fails in its first rows is released here: the caller
                # never gets the run to stop it.
                run.close()
                raise
            return run, first

        try:
            future = ticket.submit(run_start)
        except BaseException:
            ticket.release()
            raise
        try:
            return await self._bounded(future, budget)
        except BaseException:
            await self._settled(self._abandon_start(future, start), budget)
            raise

    def _abandon_start(
        self, future: Future[tuple[SourceRun, list[bytes]]], start: PendingStart
    ) -> Future[None]:
        """A start whose caller went away or ran out of time (or that failed): it never
        runs if it has not begun; a run it opened is cancelled at once and closed once
        the start returns. Nothing here waits; the future returned (tracked until then)
        ends when all that is done."""
        run = start.abandon()
        if run is not None and not future.done():
            self._in_background(run.cancel)
        cleaned: Future[None] = Future()
        self._track(cleaned)

        def finished(_: Future[tuple[SourceRun, list[bytes]]]) -> None:
            opened = start.run
            if opened is None or opened.closed:
                cleaned.set_result(None)
                return
            stopping = self._in_background(functools.partial(stop_run, opened, None, True))
            stopping.add_done_callback(lambda _: cleaned.set_result(None))

        future.add_done_callback(finished)
        return cleaned

    async def _stop(self, run: SourceRun, pending: Future[Any] | None, cancel: bool) -> None:
        """Stop a run (cancelling it at the source if it has not finished) and close it,
        on the control lane, after any read still running has returned (or a bound).
        The caller waits for that unless its time is up."""
        if pending is None and run.closed:
            return  # the source is done and released: nothing to stop, no thread hop
        stopping = self._in_background(functools.partial(stop_run, run, pending, cancel))
        await self._settled(stopping, run.budget)

    # -- Execute --------------------------------------------------------------------------

    async def execute(
        self, ctx: RequestContext, request: QueryRequest, deadline: float | None = None
    ) -> AsyncGenerator[bytes | Summary, None]:
        """Yield the result as Arrow IPC messages (schema first, end-of-stream last), then
        one Summary."""
        started = time.perf_counter()
        outcome = "error"
        from_cache = False
        try:
            max_rows = self._max_rows(request.max_rows)
            ttl = self._ttl(request.cache_ttl)
            bound, compiled, args = await self._compile(ctx, request, max_rows)
            if ttl <= 0:
                # aclosing: a caller that stops reading stops the source now, not when
                # the inner generator is collected.
                async with aclosing(
                    self._run(bound, compiled, args, deadline, started, None)
                ) as items:
                    async for item in items:
                        yield item
                outcome = "ok"
                return
            key = _result_key(ctx, request, bound, compiled)
            while True:
                hit = self.results.get(key)
                if hit is not None:
                    from_cache = True
                    for message in hit.messages:
                        yield message
                    self.metrics.rows.inc(hit.rows)
                    yield Summary(hit.rows, False, True, elapsed_us(started))
                    outcome = "ok"
                    return
                leader = self._inflight.get(key)
                if leader is None:
                    break
                # Identical query already running: wait for it, then look again. If it
                # could not be cached, one of the waiters runs it next.
                self._coalesced += 1
                await leader.wait()
            settled = asyncio.Event()
            self._inflight[key] = settled
            epoch = self.results.epoch()
            builder = self.results.builder()

            def store(run: SourceRun) -> None:
                cached = builder.finish(run.rows, run.schema)
                if cached is not None:
                    self.results.put(key, cached, ttl, epoch=epoch)

            try:
                run = self._run(
                    bound,
                    compiled,
                    args,
                    deadline,
                    started,
                    builder,
                    on_complete=store,
                    on_uncacheable=lambda: self._settle(key, settled),
                )
                async with aclosing(run) as items:
                    async for item in items:
                        yield item
                outcome = "ok"
            finally:
                builder.abandon()
                self._settle(key, settled)
        except FabricError as error:
            outcome = error.code
            log_failure(ctx, request, error, started)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self.metrics.queries.labels("execute", outcome).inc()
            self.metrics.latency.labels("execute", "cache" if from_cache else "source").observe(
                time.perf_counter() - started
            )

    def _settle(self, key: ResultKey, event: asyncio.Event) -> None:
        if self._inflight.get(key) is event:
            del self._inflight[key]
        event.set()

    async def _run(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        started: float,
        builder: ResultBuilder | None,
        on_complete: Callable[[SourceRun], None] | None = None,
        on_uncacheable: Callable[[], None] | None = None,
    ) -> AsyncGenerator[bytes | Summary, None]:
        run, first = await self._begin(bound, compiled, args, deadline, builder, read_first=True)
        if run.exhausted:
            # The whole result came with the start (its source is already released): no
            # read-ahead, nothing to stop.
            first.append(run.trailer())
            if on_complete is not None and not run.truncated:
                on_complete(run)
            self.metrics.rows.inc(run.rows)
            for message in first:
                yield message
            yield Summary(run.rows, run.truncated, False, elapsed_us(started))
            return
        pending: Future[list[bytes] | None] | None = None
        finished = False
        try:
            # One step ahead: the next messages (a gRPC message's worth) are read and
            # encoded in a thread of the source's lane while these go out to the caller.
            read_ahead = functools.partial(run.read_messages, self.settings.max_message_bytes)
            if not run.exhausted:
                pending = run.submit(read_ahead)
            for message in first:
                yield message
            while pending is not None:
                messages = await self._bounded(pending, run.budget)
                pending = None
                if messages is None:
                    break
                if not run.exhausted:
                    pending = run.submit(read_ahead)
                if on_uncacheable is not None and builder is not None and not builder.active:
                    on_uncacheable()
                    on_uncacheable = None
                for message in messages:
                    yield message
            yield run.trailer()
            finished = True
            if on_complete is not None and not run.truncated:
                on_complete(run)
            self.metrics.rows.inc(run.rows)
            yield Summary(run.rows, run.truncated, False, elapsed_us(started))
        finally:
            await self._stop(run, pending, cancel=not finished)

    # -- Preview --------------------------------------------------------------------------

    async def preview_request(
        self, ctx: RequestContext, connection: str, entity: str, limit: int
    ) -> QueryRequest:
        bound = await self._source(ctx, connection)
        if not _ENTITY_NAME.match(entity or "") or bound.catalog.entity(entity) is None:
            raise NotFound(f"entity {entity!r} is not selected on connection {connection!r}")
        rows = limit or self.settings.preview_rows
        return QueryRequest(connection, f"SELECT * FROM {entity}", max_rows=rows)

    # -- Statements (paging) --------------------------------------------------------------

    async def open_statement(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        page_rows: int,
        deadline: float | None = None,
    ) -> Page:
        started = time.perf_counter()
        try:
            return await self._open_statement(ctx, request, page_rows, deadline, started)
        except FabricError as error:
            log_failure(ctx, request, error, started)
            raise

    async def _open_statement(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        page_rows: int,
        deadline: float | None,
        started: float,
    ) -> Page:
        page_rows = self._page_rows(page_rows)
        max_rows = self._max_rows(request.max_rows)
        ttl = self._ttl(request.cache_ttl)
        bound, compiled, args = await self._compile(ctx, request, max_rows)
        key = None
        if ttl > 0:
            key = _result_key(ctx, request, bound, compiled)
            hit = self.results.get(key)
            if hit is not None:
                reader = open_ipc_stream(hit.messages)
                pager = cached_pager(reader, hit.rows, started)
                return await self._first_page(ctx, request.connection, pager, page_rows)
        epoch = self.results.epoch()
        builder = self.results.builder() if key is not None else None
        run, _ = await self._begin(bound, compiled, args, deadline, builder, read_first=False)
        run.header()

        def on_done() -> Summary:
            run.trailer()
            if key is not None and builder is not None and not run.truncated:
                cached = builder.finish(run.rows, run.schema)
                if cached is not None:
                    self.results.put(key, cached, ttl, epoch=epoch)
            return Summary(run.rows, run.truncated, False, elapsed_us(started))

        def read(limit: int) -> pa.RecordBatch | None:
            batch = run.read_batch(limit)
            if batch is not None and builder is not None and builder.active:
                for message in run.chunker.batch_messages(batch):
                    builder.add(message)
            return batch

        def close() -> None:
            if builder is not None:
                builder.abandon()
            stop_run(run, None, cancel=not run.finished)

        pager = PagedResult(run.schema, read, close, on_done, submit=run.submit, budget=run.budget)
        return await self._first_page(ctx, request.connection, pager, page_rows)

    def _page_rows(self, requested: int) -> int:
        if requested < 0:
            raise InvalidArgument("page_rows must not be negative")
        return min(requested or self.settings.page_rows, self.settings.max_rows)

    async def _read_page(
        self, pager: PagedResult, page_rows: int
    ) -> tuple[bytes, int, Summary | None]:
        """The next page: read in the source's lane, within the query's budget (a
        cached result's pages in the general pool)."""
        if pager.submit is None or pager.budget is None:
            return await self._blocking(pager.next_page, page_rows)
        return await self._bounded(pager.submit(pager.next_page, page_rows), pager.budget)

    async def _close_pager(self, pager: PagedResult) -> None:
        await self._settled(self._in_background(pager.close), pager.budget)

    async def _first_page(
        self, ctx: RequestContext, connection: str, pager: PagedResult, page_rows: int
    ) -> Page:
        try:
            data, rows, summary = await self._read_page(pager, page_rows)
        except BaseException:
            await self._close_pager(pager)
            raise
        if pager.done:
            await self._close_pager(pager)
            return Page("", data, rows, True, summary)
        statement = self.open_statements.open(
            tenant=ctx.tenant,
            stage=ctx.stage,
            principal=ctx.principal,
            payload=pager,
            close_fn=pager.close,
            connection=connection,
        )
        return Page(statement.id, data, rows, False, None)

    async def fetch(self, ctx: RequestContext, statement_id: str, page_rows: int) -> Page:
        page_rows = self._page_rows(page_rows)
        failed = False
        try:
            with self.open_statements.lease(
                statement_id, tenant=ctx.tenant, stage=ctx.stage
            ) as statement:
                pager = statement.payload
                try:
                    data, rows, summary = await self._read_page(pager, page_rows)
                except BaseException:
                    failed = True
                    raise
                statement.rows_sent += rows
                # A consumed statement is closed (its rows and parameters dropped) as the
                # lease ends: its source is released already, so that costs no I/O.
                statement.exhausted = pager.done
        finally:
            if failed:
                # A failed read leaves the source in no state to page on: drop it, its
                # source stopped on the control lane.
                close = functools.partial(
                    self.open_statements.close,
                    statement_id,
                    tenant=ctx.tenant,
                    stage=ctx.stage,
                    missing_ok=True,
                )
                await self._settled(self._in_background(close), pager.budget)
        return Page(statement_id, data, rows, pager.done, summary)

    async def close_statement(self, ctx: RequestContext, statement_id: str) -> None:
        closing = CONTROL.submit(
            self.open_statements.close, statement_id, tenant=ctx.tenant, stage=ctx.stage
        )
        await awaitable(closing)

    # -- purges and lifecycle -------------------------------------------------------------

    def purge_connection(self, tenant: str, connection: str) -> dict[str, int]:
        """Drop everything held in memory for a connection: compiled statements, cached
        results, its connectors (pools). Each purge is counted."""
        dropped = {
            "compiled": self.statements.purge_connection(tenant, connection),
            "results": self.results.purge_connection(tenant, connection),
            "statements": self.open_statements.close_connection(tenant, connection),
            "sources": self.sources.purge(tenant, connection),
        }
        self._purged["compiled_purged"] += dropped["compiled"]
        self._purged["connection_purged"] += 1
        return dropped

    def snapshot(self) -> dict[str, float]:
        cache = self.results.stats
        statements = self.open_statements.stats
        return {
            "result_cache_bytes": cache.bytes_held,
            "result_cache_entries": cache.entries,
            "result_cache_hits": cache.hits,
            "result_cache_misses": cache.misses,
            "result_cache_evictions": cache.evictions,
            "result_cache_rejected_too_large": cache.rejected_too_large,
            "result_cache_coalesced": self._coalesced,
            "compiled_statements": self.statements.size,
            "compiled_statement_hits": self.statements.hits,
            "compiled_statement_misses": self.statements.misses,
            "open_statements": statements.open,
            "purge_statement_idle": statements.purged_idle,
            "purge_statement_closed": statements.closed,
            "purge_result_expired": cache.expirations,
            "purge_connection_purged": self._purged["connection_purged"],
            "purge_compiled_purged": self._purged["compiled_purged"],
        }

    def snapshot_lanes(self) -> dict[str, float]:
        return {**self.lanes.snapshot(), "source_calls_overrun": self._overruns}

    def close(self) -> None:
        """Drop everything held and close the sources. Bounded: a driver call stuck on a
        source that stopped answering is not waited for past CLOSE_WAIT (its thread is a
        daemon, its connection is cut off by its own deadline)."""
        self.open_statements.close_all()
        self.results.clear()
        self.statements.clear()
        self.sources.close()
        self.settle(CLOSE_WAIT)
        self.lanes.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._compile_executor.shutdown(wait=True, cancel_futures=True)


def stop_run(run: SourceRun, pending: Future[Any] | None, cancel: bool) -> None:
    """Stop a run: cancel it at its source when asked, wait (boundedly) for a read still
    running in its lane, then close it. Blocking: the control lane's call."""
    if cancel and not run.closed:
        call_quietly(run.cancel)
    if pending is not None:
        concurrent.futures.wait([pending], timeout=PENDING_READ_WAIT)
    call_quietly(run.close)


def log_failure(
    ctx: RequestContext, request: QueryRequest, error: FabricError, started: float
) -> None:
    """The one log line of a failed query: literals masked, no parameter values, no rows,
    no database message text (errors carry none). Nothing is masked for a line the log
    level drops, and what is logged is cut to a bounded size first."""
    level = logging.INFO if isinstance(error, QueryRejected | Cancelled) else logging.WARNING
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "query failed: %s",
        error.message,
        extra={
            "code": error.code,
            "sqlstate": error.sqlstate,
            "tenant": ctx.tenant,
            "stage": ctx.stage,
            "connection": shorten(request.connection),
            "sql": mask_literals(request.sql),
            "params": sorted(shorten(name) for name in request.params)[:MAX_LOGGED_PARAMS],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


def _result_key(
    ctx: RequestContext, request: QueryRequest, bound: BoundSource, compiled: CompiledStatement
) -> ResultKey:
    """The result cache key of one execution: the caller's tenant and stage, the catalog
    version the statement was compiled against, the statement and its parameters."""
    return ResultKey.build(
        ctx.tenant,
        ctx.stage,
        request.connection,
        bound.catalog.version,
        compiled.fingerprint,
        request.params,
    )
