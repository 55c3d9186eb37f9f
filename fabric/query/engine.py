"""The query engine: a query's life from SQL text to Arrow IPC messages.

resolve the connection -> compile (or hit the statement cache) -> bind -> result cache
(identical queries in flight run once) -> run at the source in a worker thread -> encode
IPC messages there too, one batch ahead of the caller -> fill the cache while streaming.

The event loop never blocks on a driver: every call that may wait on a source runs in
the engine's thread pool, except a statement the compiler proved returns a handful of
rows (a lookup by primary key), which a connector may run from the loop without blocking
it (`Connector.execute_small`: PostgreSQL waits on its socket through the loop), saving
the two thread hops that cost more than such a query. Resolving a connection (metadata
store, secret store, building a connector) also runs in a worker thread unless the
catalog version is known without I/O. A caller that goes away, or a deadline that
passes, cancels the query at the source before the connection returns to its pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from connectors import QueryHandle
from fabric.catalog.metadata.store import MetadataStore
from fabric.clock import SYSTEM_CLOCK, Clock, elapsed_us
from fabric.config import Settings
from fabric.context import RequestContext
from fabric.errors import Cancelled, FabricError, InvalidArgument, NotFound, QueryRejected
from fabric.observability.logging import MAX_LOGGED_PARAMS, mask_literals, shorten
from fabric.observability.metrics import GatewayMetrics
from fabric.query.compiler import CompiledStatement, QueryLimits, StatementCompiler
from fabric.query.runs import PagedResult, PendingStart, SourceRun, Summary, cached_pager
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
_ENTITY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROTOCOLS = frozenset({"grpc", "flight_sql"})
"""The doors a query may come through (`QueryRequest.protocol`, a metrics label)."""


@dataclass(frozen=True, slots=True)
class QueryRequest:
    connection: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    cache_ttl: float = 0.0
    """Seconds the result may be served from memory; 0 = not cached."""
    max_rows: int | None = None
    """Rows the caller wants at most; None = the configured cap."""
    protocol: str = "grpc"
    """The door the query came through (`grpc`, `flight_sql`): a metrics label only."""

    def __repr__(self) -> str:
        # Parameter values stay out of logs and tracebacks; names are fine.
        return (
            f"QueryRequest(connection={self.connection!r}, params=<{sorted(self.params)}>, "
            f"cache_ttl={self.cache_ttl}, max_rows={self.max_rows}, "
            f"protocol={self.protocol!r})"
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
        self.clock = clock
        self.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="fabric")
        self.sources = SourceRegistry(
            store, secrets=secrets, connector_factory=connector_factory, closer=self.executor
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
        self._compile_executor = ThreadPoolExecutor(
            COMPILE_THREADS, thread_name_prefix="fabric-compile"
        )
        self.results = ResultCache(
            max_bytes=settings.cache_max_bytes, max_ttl=settings.cache_max_ttl, clock=clock
        )
        self.open_statements: StatementRegistry[PagedResult] = StatementRegistry(
            idle_limit=settings.statement_idle_limit,
            max_open=settings.max_open_statements,
            clock=clock,
        )
        self._inflight: dict[ResultKey, asyncio.Event] = {}
        self._purge_hooks: list[Callable[[str, str], int]] = []
        self._purged = {"connection_purged": 0, "compiled_purged": 0}
        self._coalesced = 0
        self.metrics = GatewayMetrics(self.snapshot)

    # -- plumbing -------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _timeout(self, deadline: float | None) -> float:
        """Seconds the source may take: the configured limit or the caller's deadline."""
        if deadline is None:
            return self.settings.query_timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            from fabric.errors import DeadlineExceeded

            raise DeadlineExceeded("the call's deadline passed before the query started")
        return min(self.settings.query_timeout, remaining)

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
        bound, compiled = await self._checked(ctx, request, max_rows)
        return bound, compiled, compiled.bind(request.params)

    async def _checked(
        self, ctx: RequestContext, request: QueryRequest, max_rows: int
    ) -> tuple[BoundSource, CompiledStatement]:
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
        return bound, compiled

    async def prepare(self, ctx: RequestContext, request: QueryRequest) -> CompiledStatement:
        """Compile and check a query without running it (the statement cache keeps the
        result for its executions): what a prepared statement knows before its
        parameters are bound. Refusals are logged as a failed query's are."""
        started = time.perf_counter()
        try:
            _, compiled = await self._checked(ctx, request, self._max_rows(request.max_rows))
        except FabricError as error:
            log_failure(ctx, request, error, started)
            raise
        return compiled

    def _open_run(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        timeout: float,
        builder: ResultBuilder | None,
    ) -> SourceRun:
        """Start the query at its source (blocking; in a worker thread)."""
        handle = bound.connector.execute(
            compiled.sql, args, timeout=timeout, batch_rows=self.settings.batch_rows
        )
        return self._new_run(handle, compiled, builder)

    def _new_run(
        self, handle: QueryHandle, compiled: CompiledStatement, builder: ResultBuilder | None
    ) -> SourceRun:
        try:
            return SourceRun(handle, compiled.max_rows, self.settings.max_message_bytes, builder)
        except BaseException:
            handle.close()
            raise

    async def _start(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        builder: ResultBuilder | None,
    ) -> SourceRun:
        """Start the query and take its schema message, both in a worker thread."""
        timeout = self._timeout(deadline)

        def open_with_header() -> SourceRun:
            run = self._open_run(bound, compiled, args, timeout, builder)
            try:
                run.header()
            except BaseException:
                run.close()
                raise
            return run

        return await self._blocking(open_with_header)

    async def _start_streaming(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        builder: ResultBuilder | None,
    ) -> tuple[SourceRun, list[bytes]]:
        """Start the query and read its first messages in the same worker call: a small
        result is whole (and its source closed) after one thread hop. A caller that goes
        away while that call blocks (a slow first row) still cancels the source query."""
        timeout = self._timeout(deadline)
        if args and compiled.row_bound <= SMALL_RESULT_ROWS:
            # A lookup by key: the connector may run it from the event loop, which saves
            # the two thread hops that cost more than the query itself.
            handle = await bound.connector.execute_small(
                compiled.sql, args, timeout=timeout, max_rows=compiled.row_bound
            )
            if handle is not None:
                run = self._new_run(handle, compiled, builder)
                first = [run.header()]
                if handle.buffered:  # in memory: reading it is a few microseconds
                    first.extend(run.read_messages(self.settings.max_message_bytes) or ())
                return run, first
        loop = asyncio.get_running_loop()
        start = PendingStart()

        def run_start() -> tuple[SourceRun, list[bytes]]:
            run = self._open_run(bound, compiled, args, timeout, builder)
            start.opened(run, loop)
            try:
                first = [run.header()]
                first.extend(run.read_messages(self.settings.max_message_bytes) or ())
            except BaseException:
                # A source that fails in its first rows is released here: the caller
                # never gets the run to stop it.
                run.close()
                raise
            return run, first

        future = loop.run_in_executor(self.executor, run_start)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon_start(future, start))
            raise

    async def _abandon_start(
        self, future: asyncio.Future[tuple[SourceRun, list[bytes]]], start: PendingStart
    ) -> None:
        """Cancel a query whose start is still in a worker thread, as soon as its handle
        exists, then close it once the worker has returned."""
        opened = start.watch()
        if not opened.is_set():
            waiter: asyncio.Future[Any] = asyncio.ensure_future(opened.wait())
            try:
                await asyncio.wait({future, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if start.run is not None:
            await self._blocking(start.run.cancel)
        await asyncio.gather(future, return_exceptions=True)
        if start.run is not None:
            await self._blocking(start.run.close)

    async def _stop(
        self, run: SourceRun, pending: asyncio.Future[Any] | None, cancel: bool
    ) -> None:
        """Stop a run (cancelling it at the source if it has not finished) and close it,
        after any read still in a worker thread has returned."""
        if pending is None and run.closed:
            return  # the source is done and released: nothing to stop, no thread hop

        async def stop() -> None:
            if cancel:
                await self._blocking(run.cancel)
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            await self._blocking(run.close)

        # Shielded: the caller's cancellation must not leave a source query running.
        await asyncio.shield(stop())

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
            self.metrics.queries.labels("execute", outcome, request.protocol).inc()
            self.metrics.latency.labels(
                "execute", "cache" if from_cache else "source", request.protocol
            ).observe(time.perf_counter() - started)

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
        run, first = await self._start_streaming(bound, compiled, args, deadline, builder)
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
        pending: asyncio.Future[list[bytes] | None] | None = None
        finished = False
        try:
            loop = asyncio.get_running_loop()
            # One step ahead: the next messages (a gRPC message's worth) are read and
            # encoded in a worker thread while these go out to the caller.
            read_ahead = functools.partial(run.read_messages, self.settings.max_message_bytes)
            if not run.exhausted:
                pending = loop.run_in_executor(self.executor, read_ahead)
            for message in first:
                yield message
            while pending is not None:
                messages = await pending
                pending = None
                if messages is None:
                    break
                if not run.exhausted:
                    pending = loop.run_in_executor(self.executor, read_ahead)
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
        run = await self._start(bound, compiled, args, deadline, builder)

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
            if not run.finished:
                run.cancel()
            run.close()

        return await self._first_page(
            ctx, request.connection, PagedResult(run.schema, read, close, on_done), page_rows
        )

    def _page_rows(self, requested: int) -> int:
        if requested < 0:
            raise InvalidArgument("page_rows must not be negative")
        return min(requested or self.settings.page_rows, self.settings.max_rows)

    async def _first_page(
        self, ctx: RequestContext, connection: str, pager: PagedResult, page_rows: int
    ) -> Page:
        try:
            data, rows, summary = await self._blocking(pager.next_page, page_rows)
        except BaseException:
            await self._blocking(pager.close)
            raise
        if pager.done:
            await self._blocking(pager.close)
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
        with self.open_statements.lease(
            statement_id, tenant=ctx.tenant, stage=ctx.stage
        ) as statement:
            pager = statement.payload
            try:
                data, rows, summary = await self._blocking(pager.next_page, page_rows)
            except BaseException:
                # A failed read leaves the source in no state to page on: drop it.
                statement.exhausted = True
                raise
            statement.rows_sent += rows
            # A consumed statement is closed (its rows and parameters dropped) as the
            # lease ends.
            statement.exhausted = pager.done
        return Page(statement_id, data, rows, pager.done, summary)

    async def close_statement(self, ctx: RequestContext, statement_id: str) -> None:
        def close() -> None:
            self.open_statements.close(statement_id, tenant=ctx.tenant, stage=ctx.stage)

        await self._blocking(close)

    # -- purges and lifecycle -------------------------------------------------------------

    def purge_connection(self, tenant: str, connection: str) -> dict[str, int]:
        """Drop everything held in memory for a connection: compiled statements, cached
        results, its connectors (pools). Each purge is counted."""
        statements = self.open_statements.close_connection(tenant, connection)
        for hook in list(self._purge_hooks):
            statements += hook(tenant, connection)
        dropped = {
            "compiled": self.statements.purge_connection(tenant, connection),
            "results": self.results.purge_connection(tenant, connection),
            "statements": statements,
            "sources": self.sources.purge(tenant, connection),
        }
        self._purged["compiled_purged"] += dropped["compiled"]
        self._purged["connection_purged"] += 1
        return dropped

    def on_purge(self, hook: Callable[[str, str], int]) -> None:
        """Also call `hook(tenant, connection)` whenever a connection is purged: a door
        that holds statements of its own (Flight SQL) drops them there, and returns how
        many it dropped."""
        self._purge_hooks.append(hook)

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

    def close(self) -> None:
        self.open_statements.close_all()
        self.results.clear()
        self.statements.clear()
        self.sources.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._compile_executor.shutdown(wait=True, cancel_futures=True)


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
