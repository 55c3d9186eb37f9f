"""The key-lookup path of the PostgreSQL connector (`execute_small`): the pipeline of a
query proven to return a few rows, driven from the event loop on the connection's socket,
its rows decoded at once; a caller that goes away, a timeout or an error hands the
connection to the control lane (`connectors.workers.CONTROL`) to cancel and clean up. A
caller that went away or ran out of time does not wait for that cleanup: a server that
stopped answering could hold it until the connection is cut off."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
from psycopg import generators, pq, waiting
from psycopg.abc import PQGen

from connectors.base import BufferedHandle, QueryHandle, check_execute_arguments
from connectors.postgres.pipeline import (
    CHUNKED,
    QUERY_START,
    ROW_RESULTS,
    STALE_STATEMENT,
    Plan,
    end_pipeline_gen,
    leading_results,
    make_plan,
    send_pipeline,
)
from connectors.postgres.session import Session
from connectors.postgres.worker import PgHandle
from connectors.workers import CONTROL, call_quietly
from fabric.errors import FabricError, InternalError

if TYPE_CHECKING:
    from connectors.postgres.connector import PostgresConnector

SMALL_MAX_ROWS = 64
"""The most rows `execute_small` takes on: decoding that many on the event loop costs
less than the two thread hops it saves."""
SMALL_CHUNK_ROWS = 256
"""Chunk size of a small query: more rows than this means the statement's bound was
wrong (a stale catalog), and the rest streams from a worker thread."""
_WAIT_INTERVAL = 1.0
"""How often `wait_async` wakes without news from the socket (psycopg's default, 0, would
poll the socket on every turn of the event loop); the deadline watcher, not this, ends
a query that runs too long."""


class SmallOutcome:
    """What the small exchange read: an error, or the description and row results;
    `complete` unless more rows came than a small query takes (the pipeline is then
    still running)."""

    __slots__ = ("complete", "description", "error", "leading", "released", "results")

    def __init__(
        self,
        error: psycopg.Error | None,
        description: pq.abc.PGresult | None,
        results: list[pq.abc.PGresult],
        complete: bool,
        *,
        leading: bool = False,
    ) -> None:
        self.error = error
        self.description = description
        self.results = results
        self.complete = complete
        self.leading = leading
        """The error came before the rows (a deallocation, the guard, a prepare, the
        description)."""
        self.released = False
        """The connection went back to the pool, or to a handle that owns it."""


def small_exchange(
    pgconn: pq.abc.PGconn, session: Session, plan: Plan, name: bytes | None, to_prepare: bool
) -> PQGen[SmallOutcome]:
    """The whole pipeline of a small query, as one generator the event loop drives."""
    leading = send_pipeline(pgconn, session, plan, name, to_prepare, flush=False)
    yield from generators.send(pgconn)
    error, description = yield from leading_results(pgconn, leading, plan.encoding)
    results: list[pq.abc.PGresult] = []
    if error is not None:
        yield from end_pipeline_gen(pgconn)
        return SmallOutcome(error, None, [], True, leading=True)
    if CHUNKED:
        pgconn.set_chunked_rows_mode(SMALL_CHUNK_ROWS)
    else:
        pgconn.set_single_row_mode()
    rows = 0
    while True:
        res = yield from generators.fetch(pgconn)
        if res is None:
            break
        if res.status in ROW_RESULTS:
            results.append(res)
            rows += res.ntuples
            if rows >= SMALL_CHUNK_ROWS:
                return SmallOutcome(None, description, results, False)
        elif res.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(res, encoding=plan.encoding)
    yield from end_pipeline_gen(pgconn)
    return SmallOutcome(error, description, results, True)


async def in_worker(cleanup: Callable[[], None]) -> None:
    """Run a blocking cleanup on the control lane and wait for it; a second cancellation
    of the caller stops the waiting, never the cleanup."""
    await asyncio.shield(asyncio.get_running_loop().run_in_executor(CONTROL, cleanup))


def in_background(cleanup: Callable[[], None]) -> None:
    """Run a blocking cleanup on the control lane without waiting for it."""
    CONTROL.submit(call_quietly, cleanup)


async def execute_small(
    connector: PostgresConnector,
    sql: str,
    params: Sequence[Any] = (),
    *,
    timeout: float | None = None,
    max_rows: int,
) -> QueryHandle | None:
    """`PostgresConnector.execute_small` (see there)."""
    check_execute_arguments(timeout, max(1, max_rows))
    params = tuple(params)
    if not params or not QUERY_START.match(sql) or max_rows > SMALL_MAX_ROWS:
        return None
    conn = connector._acquire_now()
    if conn is None:
        return None
    session = connector._session(conn)
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await in_worker(functools.partial(connector._give_back, conn, commit=False))
        return None
    try:
        plan = make_plan(conn, sql, params, timeout)
        name = session.prepared_name(plan.key)
        to_prepare = name is None or plan.key not in session.prepared
        pgconn = conn.pgconn
        # No handle (and no deadline-watcher entry) on the way of a successful lookup:
        # the loop's own timer bounds it, a handle is made only to clean up.
        async with asyncio.timeout(timeout):
            outcome = await waiting.wait_async(
                small_exchange(pgconn, session, plan, name, to_prepare),
                pgconn.socket,
                interval=_WAIT_INTERVAL,
            )
    except BaseException as exc:
        # Stopped part-way: what the pipeline got to prepare is unknown, so the
        # connection's next pipeline deallocates it all first.
        session.mark_all_stale()
        handle = cleanup_handle(connector, conn, timeout)
        if isinstance(exc, asyncio.CancelledError):
            in_background(handle.abandon)
            raise
        if isinstance(exc, TimeoutError):
            in_background(handle.expire)
            raise handle._deadline_error() from None
        if isinstance(exc, FabricError):
            await in_worker(handle.abandon)
            raise
        # Mapped before the cleanup: `abandon` flags the handle as cancelled, and a
        # connection the database dropped is the source's failure, not a cancel.
        mapped = handle._map(exc)
        await in_worker(abandon_or_discard(handle, conn))
        raise mapped from None
    try:
        return small_result(connector, conn, session, plan, name, to_prepare, outcome, timeout)
    except BaseException:
        if not outcome.released:
            await in_worker(cleanup_handle(connector, conn, timeout).abandon)
        raise


def cleanup_handle(
    connector: PostgresConnector, conn: psycopg.Connection[Any], timeout: float | None
) -> PgHandle:
    """A handle over a small query's connection, to cancel it and give it back."""
    handle = PgHandle(connector, conn, timeout, SMALL_CHUNK_ROWS)
    handle._pipeline = True
    return handle


def abandon_or_discard(handle: PgHandle, conn: psycopg.Connection[Any]) -> Callable[[], None]:
    """The cleanup of a small query that failed: stop it at the server and give the
    connection back, or, when the connection is already lost, only discard it (a cancel
    request to a server that dropped the session cannot reach anything)."""
    if conn.closed or conn.pgconn.status == pq.ConnStatus.BAD:
        return functools.partial(handle._release, ok=False)
    return handle.abandon


def small_result(
    connector: PostgresConnector,
    conn: psycopg.Connection[Any],
    session: Session,
    plan: Plan,
    name: bytes | None,
    to_prepare: bool,
    outcome: SmallOutcome,
    timeout: float | None,
) -> QueryHandle | None:
    """The handle of what the small exchange read (None: run the query in a worker)."""
    error = outcome.error
    if error is None or not outcome.leading:
        # Everything before the rows went through: the guard and the statement are
        # prepared on the server now, whatever the rows do.
        session.guard = True
        session.stale.clear()
        if to_prepare and name is not None:
            session.remember_prepared(plan.key, name)
    if error is not None:
        if outcome.leading:
            # Before the rows: what the pipeline prepared may exist on the server or
            # be stale; the connection's next pipeline deallocates it all first.
            session.mark_all_stale()
        handle = cleanup_handle(connector, conn, timeout)
        mapped = handle._map(error)
        outcome.released = True
        handle._release(ok=False)  # the pipeline is over: no I/O
        if outcome.leading and error.sqlstate in STALE_STATEMENT:
            return None  # a stale prepared statement: this one runs in a worker
        raise mapped
    if outcome.description is None:
        raise InternalError("the PostgreSQL server sent no description of the result")
    decoder = connector._decoder(outcome.description, plan.encoding)
    rows: list[Any] = []
    first = True
    for res in outcome.results:
        plan.tx.set_pgresult(res, set_loaders=first)
        first = False
        rows.extend(plan.tx.load_rows(0, res.ntuples, tuple))
    if not outcome.complete:
        # More rows than the statement was proven to return: stream the rest from a
        # worker thread, these rows first.
        handle = cleanup_handle(connector, conn, timeout)
        # the rows read so far size the value-sized columns: the reader is ready without
        # reading, as this runs on the event loop
        sample = decoder.from_text_rows(rows) if decoder.sized else None
        handle._start(
            decoder, handle._stream_batches(conn, plan.tx, decoder, session, rows), sample
        )
        outcome.released = True  # the handle owns the connection now
        return handle
    try:
        batches = [decoder.from_text_rows(rows)] if rows else []
    finally:
        outcome.released = True
        connector._give_back(conn, commit=True)  # idle after the sync: no I/O
    schema, sized = decoder.sized_stream(iter(batches), batches[0] if batches else None)
    return BufferedHandle(schema, list(sized))
