"""The query engine: a query's life from SQL text to Arrow IPC messages.

resolve the connection -> compile (or hit the statement cache) -> bind -> result cache
(identical queries in flight run once) -> admission -> run at the source in a thread of
its source's lane -> encode IPC messages there too, one batch ahead of the caller -> fill
the cache while streaming.

The event loop never blocks on a driver. Each source (connector) has its own lane of
threads (`fabric.query.lanes`), as many as admission lets run there at once (its pool's
size), so one source that stops answering holds only its own threads and never delays
another source's queries. A statement the compiler proved returns a handful of rows (a
lookup by primary key) may be run by its connector from the loop without blocking it
(`Connector.execute_small`: PostgreSQL waits on its socket through the loop), saving the
two thread hops that cost more than such a query. Resolving a connection (metadata
store, secret store, building a connector) runs in the engine's general worker pool
unless the catalog version is known without I/O.

A query's timeout (FABRIC_QUERY_TIMEOUT, or the caller's sooner deadline) bounds the
call whatever the source does, the wait for admission included: past it (and a short
grace for the source's own report) the caller gets DeadlineExceeded at once, and the
query is stopped and its connection cut off and discarded in the background. Stopping
and releasing queries (a caller that goes away, an early stop, a closed statement) runs
on the control lane (`connectors.workers.CONTROL`), never behind new work, and a start
whose caller has gone does not run.

Every running query (stream or open statement) holds a revocation ticket
(`fabric.query.revocation`): it stops at its next batch or page once what it reads is
no longer allowed, and a source error saying a column or table it reads is gone is told
as a schema mismatch (`fabric.query.drift`).

Shared capacity: a query that runs at its source is admitted first
(`fabric.query.admission`): within its principal's and tenant's share, a free slot of
its source (some held back for short queries) and room on the gateway's memory budget
(`fabric.results.memory`), waiting for them in a fair queue for a bounded time. An open
statement reads its rows ahead into a bounded buffer (`fabric.query.paging`) so that,
idle between pages, it holds no connection unless its result is larger than the buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
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
from cachetools import LRUCache

from connectors import QueryHandle
from connectors.blocking import announcing_handles
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
    SelectionChanged,
)
from fabric.observability import tracing
from fabric.observability.access import CallRecord, current_call
from fabric.observability.logging import MAX_LOGGED_PARAMS, mask_literals, shorten
from fabric.observability.metrics import GatewayMetrics
from fabric.query.admission import Admission, AdmissionLimits, Claim
from fabric.query.admission import Ticket as AdmissionTicket
from fabric.query.compiler import CompiledStatement, QueryLimits, StatementCompiler
from fabric.query.compiler.scope import QualifiedEntityName
from fabric.query.drift import explain_source_error
from fabric.query.federation.explain import Explanation, explain_plan, explain_single
from fabric.query.federation.front import Federation, source_reads
from fabric.query.federation.runner import FederatedSource
from fabric.query.federation.spill import SpillArea
from fabric.query.lanes import LaneCalls, Lanes, SourceLane, awaitable
from fabric.query.paging import ReadAhead
from fabric.query.revocation import STATEMENT, STREAM, Grant, RunningQueries, Ticket
from fabric.query.running import PHASE_RUNNING, PHASE_WAITING, QueryList, RunningQuery
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
from fabric.results.memory import GiveBackWhenIdle, MemoryBudget
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
BATCH_WORKING_SET = 16
"""A query running at its source holds about this many times its largest batch: measured
with PostgreSQL (a chunk of text rows, its decoding to Arrow, the next chunk arriving,
the IPC messages of the batch before on their way) at 11 to 18 times; its memory
reservation grows to it when that is more than it reserved."""
_ENTITY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROTOCOLS = frozenset({"grpc", "flight_sql", "rest"})
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
    max_bytes: int | None = None
    """Result bytes the caller wants at most; None = the configured cap."""
    protocol: str = "grpc"
    """The door the query came through (`grpc`, `flight_sql`, `rest`): a metrics label only."""

    def __repr__(self) -> str:
        # Parameter values stay out of logs and tracebacks; names are fine.
        return (
            f"QueryRequest(connection={self.connection!r}, params=<{sorted(self.params)}>, "
            f"cache_ttl={self.cache_ttl}, max_rows={self.max_rows}, "
            f"max_bytes={self.max_bytes}, protocol={self.protocol!r})"
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
        # Resolving connections and reading buffered or cached pages; source work runs
        # in lanes.
        self.executor: Executor = WorkerThreads(settings.worker_threads, name="fabric")
        self.lanes = Lanes(settings.worker_threads)
        self.running = RunningQueries(store, closer=CONTROL)
        # What runs now, for administrators to list and cancel (`fabric.query.running`).
        self.queries = QueryList()
        self.sources = SourceRegistry(
            store,
            secrets=secrets,
            connector_factory=connector_factory,
            closer=self._in_background,
            defer_close=self.running.defer_close,
        )
        limits = QueryLimits(
            max_length=settings.max_sql_length,
            max_tokens=settings.max_sql_tokens,
            max_depth=settings.max_query_depth,
            max_chain=settings.max_query_chain,
            max_parts=settings.max_query_parts,
            max_type_length=settings.max_type_length,
            # A row the query makes wide by itself must fit one batch.
            max_row_bytes=settings.batch_bytes,
        )
        self.statements = StatementCache(StatementCompiler(limits), settings.compiled_statements)
        # Queries over several connections (`fabric.query.federation`): their DuckDB work
        # runs in a lane of its own and spills in this process's own area; what a gone
        # gateway (a crash included) left spilled is wiped now, what a live one sharing
        # FABRIC_HOME spills is left alone.
        self.spill_area = SpillArea.claim(settings.federation_temp_root)
        self.federation = Federation(
            limits, settings, settings.compiled_statements, spill_root=self.spill_area.path
        )
        self._federation_lane = SourceLane("federation", settings.worker_threads)
        self._companions: dict[Ticket, list[Ticket]] = {}
        # Compiles of long texts, apart from the source work in `executor` so they never
        # wait behind a slow source, nor hold its threads.
        self._compile_executor = WorkerThreads(COMPILE_THREADS, name="fabric-compile")
        self.memory = MemoryBudget(settings.memory_budget)
        self.results = ResultCache(
            max_bytes=settings.cache_max_bytes,
            max_ttl=settings.cache_max_ttl,
            clock=clock,
            memory=self.memory,
        )
        self.open_statements: StatementRegistry[PagedResult] = StatementRegistry(
            idle_limit=settings.statement_idle_limit,
            max_open=settings.max_open_statements,
            max_per_tenant=settings.tenant_max_statements,
            max_per_principal=settings.principal_max_statements,
            clock=clock,
        )
        self.give_back = GiveBackWhenIdle(self.executor, lambda: self.admission.running > 0)
        self.admission = Admission(
            AdmissionLimits(
                tenant_queries=settings.tenant_max_queries,
                principal_queries=settings.principal_max_queries,
                short_reserve=settings.short_query_reserve,
                max_wait=settings.admission_wait,
                reservations=settings.memory_budget - settings.cache_max_bytes,
            ),
            self.memory,
            on_idle=self.give_back.idle,
        )
        # What each statement was seen to hold while it ran (BATCH_WORKING_SET times its
        # largest batch), when more than `query_memory`: its next run reserves that.
        self._working_sets: LRUCache[str, int] = LRUCache(settings.compiled_statements)
        self._inflight: dict[ResultKey, asyncio.Event] = {}
        self._purge_hooks: list[Callable[[str, str], int]] = []
        self._purged = {"connection_purged": 0, "compiled_purged": 0}
        self._coalesced = 0
        self._overruns = 0
        self._stopping: set[Future[None]] = set()
        self._stopping_lock = threading.Lock()
        self.metrics = GatewayMetrics(self.snapshot)
        self.metrics.add_pools(self.sources.pool_figures)

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

    def _max_bytes(self, requested: int | None) -> int:
        cap = self.settings.max_result_bytes
        if requested is None:
            return cap
        if requested <= 0:
            raise InvalidArgument("max_bytes must be positive (or unset for the gateway's cap)")
        return min(requested, cap)

    def _ttl(self, requested: float) -> float:
        if requested < 0:
            raise InvalidArgument("cache_ttl must not be negative")
        return min(requested, self.settings.cache_max_ttl)

    async def _admission(
        self,
        ctx: RequestContext,
        bound: BoundSource,
        compiled: CompiledStatement,
        budget: Budget,
    ) -> tuple[AdmissionTicket, LaneCalls]:
        """Wait for the query's turn at its source (see `fabric.query.admission`), within
        its budget: short when the compiler proved its row bound small. A long one
        reserves `query_memory`, or what the statement was seen to hold when it ran
        before if that was more (a run with a small result says nothing of the next: it
        never lowers the reservation); a short one reserves one message. With the ticket,
        the query's hold on its source's lane: release that (not the ticket) once the
        query is over; the admission is given back when its run is closed and its calls
        have returned."""
        if isinstance(bound.connector, FederatedSource):
            return await self._federated_admission(ctx, bound.connector, budget)
        short = compiled.row_bound <= self.settings.short_query_rows
        if short:
            memory = self.settings.max_message_bytes
        else:
            memory = self._working_sets.get(compiled.fingerprint, self.settings.query_memory)
        claim = Claim(
            tenant=ctx.tenant,
            principal=ctx.principal,
            source=bound.connector,
            capacity=bound.connector.capacity,
            short=short,
            memory=memory,
        )
        self.give_back.bind(asyncio.get_running_loop())
        with tracing.span("fabric.admission", {"fabric.short": short}):
            admitted = await self.admission.admit(claim, budget.until)
        return admitted, self.lanes.of(bound.connector).hold(admitted.release)

    async def _federated_admission(
        self, ctx: RequestContext, federated: FederatedSource, budget: Budget
    ) -> tuple[AdmissionTicket, LaneCalls]:
        """A slot at every source the query reads, taken in the order of their names (two
        federated queries never wait for each other's slots in a cycle); the first
        reserves the DuckDB part's memory cap. The lane is federation's own."""
        self.give_back.bind(asyncio.get_running_loop())
        tickets: list[AdmissionTicket] = []
        try:
            for name in sorted(federated.connectors):
                connector = federated.connectors[name]
                claim = Claim(
                    tenant=ctx.tenant,
                    principal=ctx.principal,
                    source=connector,
                    capacity=connector.capacity,
                    short=False,
                    memory=self.settings.federation_memory if not tickets else 0,
                )
                tickets.append(await self.admission.admit(claim, budget.until))
        except BaseException:
            for ticket in tickets:
                ticket.release()
            raise

        def release_all() -> None:
            for ticket in tickets:
                ticket.release()

        return tickets[0], self._federation_lane.hold(release_all)

    async def _federated(
        self, ctx: RequestContext, request: QueryRequest, max_rows: int
    ) -> tuple[BoundSource, CompiledStatement]:
        """A query naming `connection.entity`: the single-source path when it reads one
        connection, else its federated plan (each source resolved: NotFound for one the
        caller cannot see)."""
        federation = self.federation
        route = federation.routed(request.sql, request.connection)
        if route is None:
            route = await self._blocking(federation.route, request.sql, request.connection)
        if route.single is not None:
            connection, text = route.single
            return await self._checked(
                ctx, dataclasses.replace(request, connection=connection, sql=text), max_rows
            )
        sources = {name: await self._source(ctx, name) for name in route.connections}
        args = (ctx.tenant, ctx.stage, request.sql, request.connection, sources, max_rows)
        plan = federation.planned(*args)
        if plan is None:
            plan = await self._blocking(federation.plan, *args)
        return self.federation.bind(ctx.tenant, ctx.stage, plan, sources)

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
        if not request.connection:
            return await self._federated(ctx, request, max_rows)
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
        with tracing.span("fabric.compile", {"fabric.cache_hit": compiled is not None}):
            if compiled is None:
                try:
                    compiled = await self._compile_new(request, key)
                except QualifiedEntityName:
                    # `connection.entity`: another connection's entity (or this one's,
                    # named in full).
                    return await self._federated(ctx, request, max_rows)
        return bound, compiled

    async def _compile_new(self, request: QueryRequest, key: dict[str, Any]) -> CompiledStatement:
        """Compile a text the statement cache does not hold."""
        compile_statement = functools.partial(self.statements.get_or_compile, **key)
        if len(request.sql) <= INLINE_COMPILE_LENGTH:
            return compile_statement()
        # A long text may take a parse of tenths of a second even within the query
        # limits; the event loop keeps serving other calls meanwhile. A caller gone
        # before the compile starts cancels it.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compile_executor, compile_statement)

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
        budget: Budget,
        max_bytes: int,
        builder: ResultBuilder | None,
        calls: LaneCalls,
    ) -> SourceRun:
        """Start the query at its source (blocking; in a thread of its lane)."""
        settings = self.settings
        batch_rows = compiled.batch_rows(args, settings.batch_bytes, settings.batch_rows)
        handle = bound.connector.execute(
            compiled.sql, args, timeout=budget.remaining(), batch_rows=batch_rows
        )
        return self._new_run(handle, compiled, max_bytes, builder, budget, calls)

    def _new_run(
        self,
        handle: QueryHandle,
        compiled: CompiledStatement,
        max_bytes: int,
        builder: ResultBuilder | None,
        budget: Budget,
        calls: LaneCalls,
    ) -> SourceRun:
        # The run holds the query's admission until it is closed.
        release = calls.hold()
        try:
            return SourceRun(
                handle,
                compiled.max_rows,
                max_bytes,
                self.settings.max_message_bytes,
                builder,
                budget=budget,
                submit=calls.submit,
                release=release,
            )
        except BaseException:
            handle.close()
            release()
            raise

    async def _begin(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        budget: Budget,
        max_bytes: int,
        builder: ResultBuilder | None,
        calls: LaneCalls,
        ticket: Ticket | None,
        *,
        read_first: bool,
    ) -> tuple[SourceRun, list[bytes]]:
        """Start an admitted query in a thread of its source's lane and take its schema
        message there; with `read_first`, read its first messages in the same call too
        (each read ends with the revocation check of `ticket`): a small result is whole
        (and its source closed) after one thread hop. A caller that goes away (or runs
        out of time) while the start runs gets its answer at once; the start is stopped
        in the background, or never runs if it has not begun."""
        if read_first and args and compiled.row_bound <= SMALL_RESULT_ROWS:
            # A lookup by key: the connector may run it from the event loop, which saves
            # the two thread hops that cost more than the query itself.
            handle = await bound.connector.execute_small(
                compiled.sql, args, timeout=budget.remaining(), max_rows=compiled.row_bound
            )
            if handle is not None:
                run = self._new_run(handle, compiled, max_bytes, builder, budget, calls)
                try:
                    first = [run.header()]
                    if handle.buffered:  # in memory: reading it is a few microseconds
                        first.extend(run.read_messages(self.settings.max_message_bytes) or ())
                    if ticket is not None:
                        ticket.raise_if_revoked()
                except BaseException:
                    run.close()
                    raise
                return run, first
        start = PendingStart()

        def run_start() -> tuple[SourceRun, list[bytes]]:
            if not start.begin():
                raise Cancelled("the caller went away before the query started")
            with announcing_handles(start.starting):
                run = self._open_run(bound, compiled, args, budget, max_bytes, builder, calls)
            if not start.opened(run):
                run.cancel()
                run.close()
                raise Cancelled("the caller went away while the query started")
            try:
                first = [run.header()]
                if read_first:
                    if ticket is not None:
                        first.extend(self._read_checked(run, ticket) or ())
                    else:
                        first.extend(run.read_messages(self.settings.max_message_bytes) or ())
            except BaseException:
                # A source that fails in its first rows is released here: the caller
                # never gets the run to stop it.
                run.close()
                raise
            return run, first

        future = calls.submit(run_start)
        try:
            return await self._bounded(future, budget)
        except BaseException:
            await self._settled(self._abandon_start(future, start), budget)
            raise

    def _abandon_start(
        self, future: Future[tuple[SourceRun, list[bytes]]], start: PendingStart
    ) -> Future[None]:
        """A start whose caller went away or ran out of time (or that failed): it never
        runs if it has not begun; a run it opened, or a start still waiting at its source
        (its connector announced the handle), is cancelled at once, and a run is closed
        once the start returns. Nothing here waits; the future returned (tracked until then)
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
        self,
        ctx: RequestContext,
        request: QueryRequest,
        deadline: float | None = None,
        *,
        observe: Callable[[BoundSource, CompiledStatement], None] | None = None,
    ) -> AsyncGenerator[bytes | Summary, None]:
        """Yield the result as Arrow IPC messages (schema first, end-of-stream last), then
        one Summary. `observe` is told the source and statement the query runs (EXPLAIN
        reads a federated run's figures from them). The query is in the list of running
        queries while it runs; one an administrator cancels ends with `Cancelled`, stopped
        at its source first."""
        started = time.perf_counter()
        call = _noted_call(ctx, request)
        sent = 0
        with (
            self.queries.track(
                ctx,
                request.connection,
                request.sql,
                protocol=request.protocol,
                kind=STREAM,
                request_id=call.request_id if call is not None else "",
            ) as tracked,
            tracing.span("fabric.query", _query_attributes(request)) as traced,
        ):
            try:
                async with aclosing(
                    self._execute(ctx, request, deadline, tracked, observe)
                ) as items:
                    async for item in items:
                        # The call reading may not be the one that started the query
                        # (Flight SQL: GetFlightInfo starts it, DoGet reads it).
                        reader = current_call()
                        if reader is not call and reader is not None:
                            call = _noted_call(ctx, request)
                            if call is not None and tracked is not None:
                                call.fingerprint = tracked.fingerprint
                                # An administrator's cancel goes to the task reading now.
                                tracked.task = asyncio.current_task()
                        if call is not None:
                            if isinstance(item, Summary):
                                call.rows, call.from_cache = item.rows, item.from_cache
                            else:
                                call.bytes += len(item)
                        if isinstance(item, Summary):
                            traced.set("fabric.rows", item.rows)
                            traced.set("fabric.from_cache", item.from_cache)
                        else:
                            sent += len(item)
                        yield item
            except asyncio.CancelledError:
                self._raise_if_cancelled_here(ctx, request, started)
                raise
            finally:
                self.metrics.bytes_sent.labels(request.protocol).inc(sent)
                traced.set("fabric.bytes", sent)

    def _raise_if_cancelled_here(
        self, ctx: RequestContext, request: QueryRequest, started: float
    ) -> None:
        """`Cancelled` for a query an administrator cancelled (its task's cancellation
        taken back: the caller is told, not torn down); nothing for a caller gone away."""
        if self.queries.cancelled_here(asyncio.current_task()):
            error = Cancelled("an administrator cancelled this query; it was stopped at its source")
            log_failure(ctx, request, error, started)
            raise error from None

    async def _execute(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        deadline: float | None,
        tracked: RunningQuery | None,
        observe: Callable[[BoundSource, CompiledStatement], None] | None,
    ) -> AsyncGenerator[bytes | Summary, None]:
        started = time.perf_counter()
        outcome = "error"
        from_cache = False
        ticket: Ticket | None = None
        try:
            max_rows = self._max_rows(request.max_rows)
            max_bytes = self._max_bytes(request.max_bytes)
            ttl = self._ttl(request.cache_ttl)
            bound, compiled, args = await self._compile(ctx, request, max_rows)
            if observe is not None:
                observe(bound, compiled)
            _note_compiled(tracked, compiled)
            ticket = self._admit(ctx, bound, compiled, STREAM)
            if ttl <= 0:
                # aclosing: a caller that stops reading stops the source now, not when
                # the inner generator is collected.
                async with aclosing(
                    self._run(
                        ctx,
                        bound,
                        compiled,
                        args,
                        deadline,
                        max_bytes,
                        started,
                        None,
                        ticket,
                        tracked=tracked,
                    )
                ) as items:
                    async for item in items:
                        yield item
                outcome = "ok"
                return
            key = _result_key(ctx, request, bound, compiled)
            while True:
                with tracing.span("fabric.cache") as looked_up:
                    hit = self.results.lease(key)
                    looked_up.set("fabric.cache_hit", hit is not None)
                # A result cached whole under a larger byte cap is more than this caller
                # may receive: it runs again, and ends truncated.
                if hit is not None and hit.nbytes > max_bytes:
                    self.results.done_reading(hit)
                    hit = None
                if hit is not None:
                    from_cache = True
                    try:
                        for message in hit.messages:
                            ticket.raise_if_revoked()
                            yield message
                    finally:
                        # Evicted meanwhile, its bytes were counted until now.
                        self.results.done_reading(hit)
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
                    ctx,
                    bound,
                    compiled,
                    args,
                    deadline,
                    max_bytes,
                    started,
                    builder,
                    ticket,
                    on_complete=store,
                    on_uncacheable=lambda: self._settle(key, settled),
                    tracked=tracked,
                )
                async with aclosing(run) as items:
                    async for item in items:
                        yield item
                outcome = "ok"
            finally:
                builder.abandon()
                self._settle(key, settled)
        except FabricError as error:
            told = await self._explained(error, ticket)
            outcome = told.code
            log_failure(ctx, request, told, started)
            if told is error:
                raise
            raise told from None
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if ticket is not None:
                self._release_ticket(ticket)
                # Only a connection the query resolved is a label (bounded: see metrics).
                self.metrics.connection_latency.labels(
                    ctx.tenant, ticket.grant.connection, outcome
                ).observe(elapsed)
            self.metrics.queries.labels("execute", outcome, request.protocol).inc()
            self.metrics.latency.labels(
                "execute", "cache" if from_cache else "source", request.protocol
            ).observe(elapsed)

    def _read_checked(self, run: SourceRun, ticket: Ticket) -> list[bytes] | None:
        """The next messages of `run` (a worker thread's call), if the query is still
        allowed once they are read; SelectionChanged otherwise."""
        messages = run.read_messages(self.settings.max_message_bytes)
        self.running.check(ticket)
        return messages

    def _admit(
        self, ctx: RequestContext, bound: BoundSource, compiled: CompiledStatement, kind: str
    ) -> Ticket:
        federated = bound.connector
        if isinstance(federated, FederatedSource):
            return self._admit_federated(ctx, federated, kind)
        grant = Grant.of(ctx.tenant, bound, compiled)
        return self.running.admit(grant, bound.catalog.version, bound.connector, kind)

    def _admit_federated(
        self, ctx: RequestContext, federated: FederatedSource, kind: str
    ) -> Ticket:
        """One revocation ticket per source (a purge of any stops the query at its next
        batch); the first stands for the query, the others go with it."""
        tickets = []
        for name in sorted(federated.connectors):
            bound = self.sources.current(ctx.tenant, name, ctx.stage)
            if bound is None:
                bound = self.sources.resolve(ctx.tenant, name, ctx.stage)
            reads = source_reads(federated.plan, name)
            holder = CompiledStatement(
                sql="",
                param_names=(),
                row_limit=1,
                row_bound=1,
                max_rows=1,
                entities=tuple(e for e, _ in reads),
                reads=reads,
                fingerprint="",
            )
            grant = Grant.of(ctx.tenant, bound, holder)
            tickets.append(self.running.admit(grant, bound.catalog.version, bound.connector, kind))
        primary, *others = tickets
        self._companions[primary] = others

        def revoked() -> None:
            for ticket in tickets:
                ticket.raise_if_revoked()

        federated.revoked = revoked
        return primary

    def _release_ticket(self, ticket: Ticket) -> None:
        self.running.release(ticket)
        for other in self._companions.pop(ticket, ()):
            self.running.release(other)

    async def _explained(self, error: FabricError, ticket: Ticket | None) -> FabricError:
        """The error the caller is told: the revocation when the query was revoked (a
        source closed under it fails some other way), a schema mismatch for a source that
        no longer has a column or table the statement reads, else `error`."""
        if ticket is None or isinstance(error, SelectionChanged):
            return error
        if ticket.revoked is not None:
            return ticket.revoked
        explained = explain_source_error(error, ticket.grant, ticket.connector)
        if explained is None:
            return error
        return await self._blocking(explained)

    def _settle(self, key: ResultKey, event: asyncio.Event) -> None:
        if self._inflight.get(key) is event:
            del self._inflight[key]
        event.set()

    async def _run(
        self,
        ctx: RequestContext,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        max_bytes: int,
        started: float,
        builder: ResultBuilder | None,
        ticket: Ticket,
        on_complete: Callable[[SourceRun], None] | None = None,
        on_uncacheable: Callable[[], None] | None = None,
        *,
        tracked: RunningQuery | None = None,
    ) -> AsyncGenerator[bytes | Summary, None]:
        # The admission is held until the last message is handed on: the source's slot is
        # free a little late, the memory of the messages on their way is counted. The
        # query's time runs from before its wait for admission.
        budget = self._budget(deadline)
        if tracked is not None:
            tracked.phase = PHASE_WAITING
        admitted, calls = await self._admission(ctx, bound, compiled, budget)
        if tracked is not None:
            tracked.phase = PHASE_RUNNING
        items = self._stream(
            admitted,
            calls,
            ticket,
            bound,
            compiled,
            args,
            budget,
            max_bytes,
            started,
            builder,
            on_complete,
            on_uncacheable,
            tracked,
        )
        if tracing.tracing_enabled():
            items = self._traced(items, bound)
        try:
            async with aclosing(items) as items:
                async for item in items:
                    yield item
        finally:
            calls.release()

    async def _traced(
        self, items: AsyncGenerator[bytes | Summary, None], bound: BoundSource
    ) -> AsyncGenerator[bytes | Summary, None]:
        """`items` inside a `fabric.source` span (only while tracing is on: off, the
        engine streams without this extra step per message)."""
        with tracing.span("fabric.source", _source_attributes(bound)) as traced:
            async with aclosing(items):
                async for item in items:
                    if isinstance(item, Summary):
                        traced.set("fabric.rows", item.rows)
                    yield item

    async def _stream(
        self,
        admitted: AdmissionTicket,
        calls: LaneCalls,
        ticket: Ticket,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        budget: Budget,
        max_bytes: int,
        started: float,
        builder: ResultBuilder | None,
        on_complete: Callable[[SourceRun], None] | None,
        on_uncacheable: Callable[[], None] | None,
        tracked: RunningQuery | None,
    ) -> AsyncGenerator[bytes | Summary, None]:
        run, first = await self._begin(
            bound, compiled, args, budget, max_bytes, builder, calls, ticket, read_first=True
        )
        if tracked is not None:
            tracked.counting(run)
        try:
            admitted.cover(BATCH_WORKING_SET * run.largest_batch)
            if run.exhausted:
                # The whole result came with the start (its source is already released):
                # no read-ahead, nothing to stop.
                first.append(run.trailer())
                if on_complete is not None and not run.truncated:
                    on_complete(run)
                self._count_rows(run)
                for message in first:
                    yield message
                yield Summary(run.rows, run.truncated, False, elapsed_us(started))
                return
            pending: Future[list[bytes] | None] | None = None
            finished = False
            try:
                # One step ahead: the next messages (a gRPC message's worth) are read and
                # encoded in a thread of the source's lane while these go out to the
                # caller; each read ends with the revocation check, and nothing goes out
                # once the query is revoked.
                read_ahead = functools.partial(self._read_checked, run, ticket)
                if not run.exhausted:
                    pending = run.submit(read_ahead)
                for message in first:
                    ticket.raise_if_revoked()
                    yield message
                while pending is not None:
                    messages = await self._bounded(pending, run.budget)
                    pending = None
                    if messages is None:
                        break
                    admitted.cover(BATCH_WORKING_SET * run.largest_batch)
                    if not run.exhausted:
                        pending = run.submit(read_ahead)
                    if on_uncacheable is not None and builder is not None and not builder.active:
                        on_uncacheable()
                        on_uncacheable = None
                    for message in messages:
                        ticket.raise_if_revoked()
                        yield message
                yield run.trailer()
                finished = True
                if on_complete is not None and not run.truncated:
                    on_complete(run)
                self._count_rows(run)
                yield Summary(run.rows, run.truncated, False, elapsed_us(started))
            finally:
                await self._stop(run, pending, cancel=not finished)
        finally:
            self._learn_working_set(admitted, compiled, run)

    def _learn_working_set(
        self, admitted: AdmissionTicket, compiled: CompiledStatement, run: SourceRun
    ) -> None:
        """What the statement's next run reserves, when this one held more than
        `query_memory` (see `_admission`)."""
        held = BATCH_WORKING_SET * run.largest_batch
        if admitted.claim.short or held <= self.settings.query_memory:
            return
        if held > self._working_sets.get(compiled.fingerprint, 0):
            self._working_sets[compiled.fingerprint] = held

    def _count_rows(self, run: SourceRun) -> None:
        """Rows sent, and a result cut by the row or byte cap, by which."""
        self.metrics.rows.inc(run.rows)
        if run.truncated_by is not None:
            self.metrics.truncated.labels(run.truncated_by).inc()

    # -- EXPLAIN --------------------------------------------------------------------------

    async def explain(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        *,
        analyze: bool = False,
        deadline: float | None = None,
    ) -> Explanation:
        """The plan of a query: the statement each source runs, what DuckDB runs; with
        `analyze`, the query is run (its rows dropped, never cached) and each part says
        the rows and bytes it moved."""
        started = time.perf_counter()
        try:
            max_rows = self._max_rows(request.max_rows)
            if not analyze:
                bound, compiled = await self._checked(ctx, request, max_rows)
                return _explanation(bound, compiled, None)
            seen: list[tuple[BoundSource, CompiledStatement]] = []
            rows = nbytes = 0
            async with aclosing(
                self.execute(
                    ctx,
                    dataclasses.replace(request, cache_ttl=0.0),
                    deadline,
                    observe=lambda b, c: seen.append((b, c)),
                )
            ) as items:
                async for item in items:
                    if isinstance(item, Summary):
                        rows = item.rows
                    else:
                        nbytes += len(item)
            bound, compiled = seen[0]
            return _explanation(bound, compiled, (rows, nbytes))
        except FabricError as error:
            log_failure(ctx, request, error, started)
            raise

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
        call = _noted_call(ctx, request)
        with self.queries.track(
            ctx,
            request.connection,
            request.sql,
            protocol=request.protocol,
            kind=STATEMENT,
            request_id=call.request_id if call is not None else "",
        ) as tracked:
            try:
                page = await self._open_statement(
                    ctx, request, page_rows, deadline, started, tracked
                )
                if call is not None:
                    call.rows, call.bytes = page.rows, len(page.arrow_ipc)
                    call.from_cache = page.summary is not None and page.summary.from_cache
                return page
            except FabricError as error:
                log_failure(ctx, request, error, started)
                raise
            except asyncio.CancelledError:
                self._raise_if_cancelled_here(ctx, request, started)
                raise

    async def _open_statement(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        page_rows: int,
        deadline: float | None,
        started: float,
        tracked: RunningQuery | None,
    ) -> Page:
        page_rows = self._page_rows(page_rows)
        max_rows = self._max_rows(request.max_rows)
        max_bytes = self._max_bytes(request.max_bytes)
        ttl = self._ttl(request.cache_ttl)
        await self._check_statement_room(ctx)
        bound, compiled, args = await self._compile(ctx, request, max_rows)
        _note_compiled(tracked, compiled)
        if tracked is not None:
            tracked.phase = PHASE_RUNNING
        ticket = self._admit(ctx, bound, compiled, STATEMENT)
        try:
            pager, admitted = await self._pager(
                bound, compiled, args, deadline, max_bytes, started, ctx, request, ttl
            )
        except BaseException as error:
            self._release_ticket(ticket)
            if isinstance(error, FabricError):
                told = await self._explained(error, ticket)
                if told is not error:
                    raise told from None
            raise
        pager.ticket = ticket
        page = await self._first_page(ctx, request.connection, pager, page_rows)
        if admitted is not None:
            # The first page is out and the rest is in the buffer or at the source: the
            # buffer's rows are counted as they are held, the reservation is not needed.
            admitted.release_memory()
        return page

    async def _pager(
        self,
        bound: BoundSource,
        compiled: CompiledStatement,
        args: tuple[Any, ...],
        deadline: float | None,
        max_bytes: int,
        started: float,
        ctx: RequestContext,
        request: QueryRequest,
        ttl: float,
    ) -> tuple[PagedResult, AdmissionTicket | None]:
        """The result to page through, from the result cache or a run at the source, and
        the run's admission (None for a cached result)."""
        key = None
        if ttl > 0:
            key = _result_key(ctx, request, bound, compiled)
            with tracing.span("fabric.cache") as looked_up:
                hit = self.results.lease(key)
                looked_up.set("fabric.cache_hit", hit is not None)
            if hit is not None and hit.nbytes > max_bytes:
                # Cached whole under a larger byte cap: more than this caller may receive.
                self.results.done_reading(hit)
                hit = None
            if hit is not None:
                leased = hit
                reader = open_ipc_stream(leased.messages)
                pager = cached_pager(
                    reader, leased.rows, started, release=lambda: self.results.done_reading(leased)
                )
                return pager, None
        budget = self._budget(deadline)
        admitted, calls = await self._admission(ctx, bound, compiled, budget)
        epoch = self.results.epoch()
        builder = self.results.builder() if key is not None else None
        try:
            run, _ = await self._begin(
                bound, compiled, args, budget, max_bytes, builder, calls, None, read_first=False
            )
        except BaseException:
            calls.release()
            if builder is not None:
                builder.abandon()
            raise

        def on_done() -> Summary:
            run.trailer()
            if key is not None and builder is not None and not run.truncated:
                cached = builder.finish(run.rows, run.schema)
                if cached is not None:
                    self.results.put(key, cached, ttl, epoch=epoch)
            if run.truncated_by is not None:
                self.metrics.truncated.labels(run.truncated_by).inc()
            return Summary(run.rows, run.truncated, False, elapsed_us(started))

        def read() -> pa.RecordBatch | None:
            batch = run.read_batch()
            if batch is not None and builder is not None and builder.active:
                for message in run.chunker.batch_messages(batch):
                    builder.add(message)
            return batch

        def source_ended() -> None:
            # Every row is read (into the buffer, or to the caller): the connection goes
            # back to its pool now, not when the caller has paged to the end.
            run.close()
            calls.release()

        ahead = ReadAhead(
            read, self.settings.statement_buffer_bytes, self.memory.charge("buffered"), source_ended
        )

        def close() -> None:
            ahead.close()
            if builder is not None:
                builder.abandon()
            stop_run(run, None, cancel=not run.finished)
            calls.release()

        pager = PagedResult(
            run.schema,
            ahead.read,
            close,
            on_done,
            after_page=ahead.fill,
            holds_source=lambda: ahead.holds_source,
            submit=run.submit,
            budget=run.budget,
        )
        return pager, admitted

    async def _check_statement_room(self, ctx: RequestContext) -> None:
        """Refuse a caller whose open statements are at its share before its query runs
        (after sweeping idle statements, in a worker thread: closing one may block)."""
        statements = self.open_statements
        if statements.refusal_for(tenant=ctx.tenant, principal=ctx.principal) is None:
            return
        await self._blocking(statements.sweep)
        refusal = statements.refusal_for(tenant=ctx.tenant, principal=ctx.principal, count=True)
        if refusal is not None:
            raise refusal

    def _page_rows(self, requested: int) -> int:
        if requested < 0:
            raise InvalidArgument("page_rows must not be negative")
        return min(requested or self.settings.page_rows, self.settings.max_rows)

    def _checked_page(
        self, pager: PagedResult, page_rows: int
    ) -> tuple[bytes, int, Summary | None]:
        """The next page (a worker thread's call) if the statement is still allowed both
        before it is read and once it is; SelectionChanged otherwise, the page dropped."""
        ticket = pager.ticket
        if ticket is not None:
            self.running.check(ticket)
        page = pager.next_page(page_rows)
        if ticket is not None:
            self.running.check(ticket)
        return page

    def _close_pager(self, pager: PagedResult) -> None:
        try:
            pager.close()
        finally:
            if pager.ticket is not None:
                self._release_ticket(pager.ticket)

    async def _read_page(
        self, pager: PagedResult, page_rows: int
    ) -> tuple[bytes, int, Summary | None]:
        """The next page: read in the source's lane, within the query's budget, while the
        statement still holds its source; from memory (its buffer, a cached result) in
        the general pool otherwise."""
        if pager.submit is None or pager.budget is None or not pager.holds_source():
            return await self._blocking(self._checked_page, pager, page_rows)
        return await self._bounded(pager.submit(self._checked_page, pager, page_rows), pager.budget)

    async def _close_pager_settled(self, pager: PagedResult) -> None:
        """Close a statement's result on the control lane, waiting for that unless the
        query's time is up."""
        closing = self._in_background(functools.partial(self._close_pager, pager))
        await self._settled(closing, pager.budget)

    def _idle_limit(self, pager: PagedResult) -> float | None:
        """A statement holding its source connection between pages gets the shorter idle
        limit; the others the registry's."""
        return self.settings.statement_pinned_idle_limit if pager.holds_source() else None

    async def _first_page(
        self, ctx: RequestContext, connection: str, pager: PagedResult, page_rows: int
    ) -> Page:
        try:
            data, rows, summary = await self._read_page(pager, page_rows)
        except BaseException as error:
            await self._close_pager_settled(pager)
            if isinstance(error, FabricError):
                told = await self._explained(error, pager.ticket)
                if told is not error:
                    raise told from None
            raise
        if pager.done:
            await self._close_pager_settled(pager)
            return Page("", data, rows, True, summary)
        statement = self.open_statements.open(
            tenant=ctx.tenant,
            stage=ctx.stage,
            principal=ctx.principal,
            payload=pager,
            close_fn=functools.partial(self._close_pager, pager),
            connection=connection,
        )
        statement.idle_limit = self._idle_limit(pager)
        return Page(statement.id, data, rows, False, None)

    async def fetch(self, ctx: RequestContext, statement_id: str, page_rows: int) -> Page:
        page_rows = self._page_rows(page_rows)
        failed: PagedResult | None = None
        try:
            with self.open_statements.lease(
                statement_id, tenant=ctx.tenant, stage=ctx.stage
            ) as statement:
                pager = statement.payload
                try:
                    data, rows, summary = await self._read_page(pager, page_rows)
                except BaseException as error:
                    failed = pager
                    if isinstance(error, FabricError):
                        told = await self._explained(error, pager.ticket)
                        if told is not error:
                            raise told from None
                    raise
                statement.rows_sent += rows
                # A consumed statement is closed (its rows and parameters dropped) as the
                # lease ends: its source is released already, so that costs no I/O.
                statement.exhausted = pager.done
                statement.idle_limit = self._idle_limit(pager)
        finally:
            if failed is not None:
                # A failed read leaves the source in no state to page on: drop it, its
                # source stopped on the control lane.
                close = functools.partial(
                    self.open_statements.close,
                    statement_id,
                    tenant=ctx.tenant,
                    stage=ctx.stage,
                    missing_ok=True,
                )
                await self._settled(self._in_background(close), failed.budget)
        call = current_call()
        if call is not None:
            call.identify(ctx.principal, ctx.tenant, ctx.stage)
            call.rows, call.bytes = rows, len(data)
        return Page(statement_id, data, rows, pager.done, summary)

    async def close_statement(self, ctx: RequestContext, statement_id: str) -> None:
        closing = CONTROL.submit(
            self.open_statements.close, statement_id, tenant=ctx.tenant, stage=ctx.stage
        )
        await awaitable(closing)

    # -- purges and lifecycle -------------------------------------------------------------

    def purge_connection(self, tenant: str, connection: str) -> dict[str, int]:
        """Drop everything held in memory for a connection: compiled statements, cached
        results, its connectors (pools); and stop the running queries (open statements,
        Execute streams) the connection's current state no longer allows, while the
        others go on (Flight SQL's prepared statements and started results of the
        connection, held by the purge hooks, are closed). Blocking (the metadata store is
        read). Each purge is counted."""
        revoked = self.running.revalidate(tenant, connection)
        statements = self.open_statements.revoke_where(_revocation_of)
        for hook in list(self._purge_hooks):
            statements += hook(tenant, connection)
        dropped = {
            "compiled": self.statements.purge_connection(tenant, connection)
            + self.federation.purge(tenant, connection),
            "results": self.results.purge_connection(tenant, connection),
            "statements": statements,
            "streams": sum(1 for ticket in revoked if ticket.kind == STREAM),
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
        admission = self.admission.stats
        usage = self.memory.usage()
        return {
            "admission_running": admission.running,
            "admission_waiting": admission.waiting,
            "admission_admitted": admission.admitted,
            "admission_queued": admission.queued,
            **{f"admission_refused_{r}": n for r, n in admission.refused.items()},
            **{f"statements_refused_{share}": n for share, n in statements.refused.items()},
            "memory_budget_bytes": self.memory.limit,
            "memory_used_bytes": sum(usage.values()),
            **{f"memory_held_{use}": n for use, n in usage.items()},
            "memory_charges_refused": self.memory.refused,
            "memory_given_back": self.give_back.given_back,
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
            "source_calls_overrun": self._overruns,
            **self.running.snapshot(),
            **self.queries.snapshot(),
        }

    def close(self) -> None:
        """Drop everything held and close the sources. Bounded: a driver call stuck on a
        source that stopped answering is not waited for past CLOSE_WAIT (its thread is a
        daemon, its connection is cut off by its own deadline)."""
        self.give_back.stop()
        self.open_statements.close_all()
        self.running.close_all()
        self.results.clear()
        self.statements.clear()
        self.sources.close()
        self.settle(CLOSE_WAIT)
        self.lanes.close()
        self._federation_lane.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._compile_executor.shutdown(wait=True, cancel_futures=True)
        self.spill_area.release()


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


def _explanation(
    bound: BoundSource, compiled: CompiledStatement, moved: tuple[int, int] | None
) -> Explanation:
    connector = bound.connector
    if isinstance(connector, FederatedSource):
        run = connector.runs[-1] if connector.runs and moved is not None else None
        return explain_plan(connector.plan, run, moved)
    return explain_single(bound.catalog.connection, compiled, moved)


def _query_attributes(request: QueryRequest) -> dict[str, str | bool | int | float] | None:
    """The `fabric.query` span's attributes (None while tracing is off: nothing built)."""
    if not tracing.tracing_enabled():
        return None
    return {"fabric.connection": shorten(request.connection), "fabric.protocol": request.protocol}


def _source_attributes(bound: BoundSource) -> dict[str, str | bool | int | float] | None:
    """The `fabric.source` span's attributes: the connector's kind and the connection's
    name (None while tracing is off)."""
    if not tracing.tracing_enabled():
        return None
    return {
        "db.system": bound.connector.kind,
        "fabric.connection": shorten(bound.connection.name),
        "fabric.stage": bound.stage,
    }


def _noted_call(ctx: RequestContext, request: QueryRequest) -> CallRecord | None:
    """The access-log record of the call this query serves (who asks, on which
    connection), if its door opened one."""
    call = current_call()
    if call is not None:
        call.identify(ctx.principal, ctx.tenant, ctx.stage)
        call.connection = shorten(request.connection)
    return call


def _note_compiled(tracked: RunningQuery | None, compiled: CompiledStatement) -> None:
    """The statement's fingerprint, in the running query and the call's access record."""
    if tracked is not None:
        tracked.fingerprint = compiled.fingerprint
    call = current_call()
    if call is not None:
        call.fingerprint = compiled.fingerprint


def _revocation_of(pager: PagedResult) -> SelectionChanged | None:
    """Why an open statement may not go on (its ticket was revoked), or None."""
    return None if pager.ticket is None else pager.ticket.revoked


def _result_key(
    ctx: RequestContext, request: QueryRequest, bound: BoundSource, compiled: CompiledStatement
) -> ResultKey:
    """The result cache key of one execution: the caller's tenant and stage, the catalog
    version the statement was compiled against, the statement and its parameters."""
    # A federated query's result is keyed by all its connections (`Federation.bind`).
    connection = bound.catalog.connection if bound.connector.kind == "federation" else None
    return ResultKey.build(
        ctx.tenant,
        ctx.stage,
        connection or request.connection,
        bound.catalog.version,
        compiled.fingerprint,
        request.params,
    )
