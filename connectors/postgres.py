"""PostgreSQL connector: psycopg 3 with a bounded connection pool, results into Arrow.

Every query runs read-only with `statement_timeout` (from the query's timeout),
`idle_in_transaction_session_timeout`, `TimeZone = UTC`, `DateStyle = ISO`,
`IntervalStyle = iso_8601`, `bytea_output = hex` and `extra_float_digits = 1` set for its
own transaction only, so the text form of every value is the one `connectors.arrow_types`
parses and nothing a query changes in the session (`set_config(..., false)` is allowed in
a read-only transaction) reaches the next one. Pooled connections also get these as
session defaults (with `default_transaction_read_only = on`) when they are opened.

Two result paths, neither builds a Python value of a column's type per row:

* no parameters: `BEGIN READ ONLY` + SET LOCALs in one round trip, then
  `COPY (sql) TO STDOUT (FORMAT csv)`, read block by block and parsed by pyarrow's
  streaming CSV reader with explicit column types. The types come from describing the
  statement (`PQprepare` + `PQdescribePrepared` of the unnamed statement), cached per SQL
  text in a small LRU with a time limit (a stale entry is dropped on the first conversion
  error, so an ALTER TABLE heals itself).
* parameters (a query: SELECT, WITH, VALUES, TABLE): COPY cannot take bound parameters
  and values are never interpolated, so the statement runs with the extended protocol,
  values bound by the server, in one libpq pipeline and one round trip: a prepared guard
  statement (`SELECT set_config(..., true), ...`: `transaction_read_only = on`, the
  timeout and the formats above, for the pipeline's implicit transaction), then the
  query (prepared on the connection from its second execution there; describe and flush
  first, so `execute` returns with the schema while the query runs), then a sync. Rows
  come in chunks of `batch_rows` (libpq >= 17 chunked-rows mode; single rows otherwise),
  so memory stays bounded, as text (psycopg's C text loader) decoded column-wise by
  `TextDecoder.from_text_rows` into exactly the types and values of the COPY path. A
  prepared statement that went stale (its result type changed, or it was deallocated)
  fails that query once at most and is dropped. Any other statement with parameters
  (never run outside a transaction block: CALL can end transactions) takes the former
  transaction path: `BEGIN READ ONLY` + SET LOCALs, `DECLARE ... CURSOR FOR sql`, FETCH.

Key lookups (`execute_small`, a statement the compiler proved returns at most a few
rows): the same pipeline, without the flush request, driven from the event loop with
psycopg's `wait_async` on the connection's socket, so the whole answer comes in one read
and no worker thread is involved; the rows are decoded at once (`TextDecoder`'s Python
route) into a `BufferedHandle`. Its own timer bounds it; a caller that goes away, a
timeout or an error hands the connection to a worker thread to cancel and clean up. More
rows than proven (a stale catalog) stream on from a worker thread like `execute`'s.

Cancellation: `QueryHandle.cancel` sends a cancel request to the server
(`Connection.cancel_safe`); one shared deadline-watcher thread (a heap of deadlines)
does the same when a query's timeout passes (statement_timeout alone bounds each
statement, not the whole query). The connection then goes back to the pool once it is
idle again (ROLLBACK, or the rest of the pipeline read), or is closed (the pool replaces
it) when it cannot be brought back to idle.

Errors: connection failures, authentication failures and pool timeouts are
SourceUnavailable; a cancel is Cancelled, a timeout DeadlineExceeded; any other database
error is SourceQueryError carrying the SQLSTATE and the condition name only, never the
server's message (it can echo values) and never the password.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import psycopg
import psycopg.errors
import pyarrow as pa
from psycopg import capabilities, generators, pq, waiting
from psycopg.abc import PQGen
from psycopg.abc import Transformer as TransformerProtocol
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from connectors.arrow_types import PgColumn, TextDecoder, pg_arrow_type, slices
from connectors.base import (
    BufferedHandle,
    Connector,
    ConnectorConfig,
    ParamStyle,
    QueryHandle,
    check_execute_arguments,
)
from connectors.blocking import BlockingQueryHandle
from connectors.discovery import TableAssembler
from fabric.errors import (
    FabricError,
    InternalError,
    InvalidArgument,
    SourceQueryError,
    SourceUnavailable,
)
from fabric.model import ColumnInfo, TableInfo, TableKind

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
_IDLE_IN_TRANSACTION_MS = 60_000
_DESCRIBE_CACHE_SIZE = 256
_DESCRIBE_CACHE_TTL = 300.0
_CANCEL_TIMEOUT = 5.0
_CANCEL_RESEND = 0.25
"""Seconds between cancel requests while a cancelled query still holds its connection:
the server ignores a cancel that lands between two statements of a pipeline."""
_CANCEL_ATTEMPTS = 40
_CURSOR_NAME = "fabric_rows"
_COPY_BLOCK = 1 << 21

_SESSION = (
    "SET LOCAL idle_in_transaction_session_timeout = {idle}; "
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; "
    "SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL bytea_output = 'hex'; "
    "SET LOCAL extra_float_digits = 1"
)
# The same settings for the whole session (plus read-only by default), applied once when
# a pooled connection is opened; each query's transaction sets them again (the guard or
# the SET LOCALs), so the session's values are only a default.
_SESSION_SETTINGS = (
    "SET default_transaction_read_only = on; "
    f"SET idle_in_transaction_session_timeout = {_IDLE_IN_TRANSACTION_MS}; "
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'iso_8601'; "
    "SET bytea_output = 'hex'; SET extra_float_digits = 1"
)
# Sent before every parameterized query, in the same pipeline (one round trip) and the
# same implicit transaction: that transaction is read-only whatever the session's
# defaults, its statement_timeout is the query's ($1; NULL keeps the server's), and the
# text forms are the ones `connectors.arrow_types` parses. All transaction-local, like
# the SET LOCALs of the transaction path, so nothing a query changed in the session
# can reach the next one.
_GUARD_NAME = b"fabric_guard"
_GUARD_SQL = (
    b"SELECT set_config('transaction_read_only', 'on', true), "
    b"set_config('statement_timeout', $1, true), "
    b"set_config('idle_in_transaction_session_timeout', '%d', true), "
    b"set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO', true), "
    b"set_config('IntervalStyle', 'iso_8601', true), set_config('bytea_output', 'hex', true), "
    b"set_config('extra_float_digits', '1', true)"
) % _IDLE_IN_TRANSACTION_MS
_TEXT_OID = 25
_PREPARE_AFTER = 2  # executions of the same statement on a connection before preparing it
_PREPARED_MAX = 128  # prepared statements kept per connection
_SEEN_MAX = 512
_DECODER_CACHE_SIZE = 256
_CHUNKED = capabilities.has_stream_chunked()
_ROWS = (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.SINGLE_TUPLE)
# A statement that can run outside an explicit transaction: a query (the session is
# read-only by default, so a data-modifying WITH is refused), never CALL or DO (which can
# end transactions). Leading comments may not nest; anything unsure takes the
# transaction path.
_QUERY_START = re.compile(
    r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*(?:(?!/\*).)*?\*/|\()*(?:select|with|values|table)\b",
    re.IGNORECASE | re.DOTALL,
)
_PLACEHOLDER = re.compile(r"%(.|\Z)", re.DOTALL)
_PARAMS_MISMATCH = (
    "the parameters do not match the statement (one value per placeholder, of a supported "
    "type: int, float, Decimal, str, bool, date, time, datetime, bytes, None)"
)
_STALE_STATEMENT = ("0A000", "26000")  # result type changed; prepared statement gone
_SMALL_MAX_ROWS = 64
"""The most rows `execute_small` takes on: decoding that many on the event loop costs
less than the two thread hops it saves."""
_SMALL_CHUNK_ROWS = 256
"""Chunk size of a small query: more rows than this means the statement's bound was
wrong (a stale catalog), and the rest streams from a worker thread."""
_NO_WAIT = 0.001  # getconn's timeout once the pool has said a connection is free
_WAIT_INTERVAL = 1.0
"""How often `wait_async` wakes without news from the socket (psycopg's default, 0, would
poll the socket on every turn of the event loop); the deadline watcher, not this, ends
a query that runs too long."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _condition(sqlstate: str) -> str:
    """`division_by_zero` for 22012: psycopg's class name for the SQLSTATE, snake-cased."""
    try:
        return _snake(psycopg.errors.lookup(sqlstate).__name__)
    except KeyError:
        return "database_error"


def _source_error(sqlstate: str) -> SourceQueryError:
    return SourceQueryError(
        f"the source refused the query: {_condition(sqlstate)} (SQLSTATE {sqlstate})",
        sqlstate=sqlstate,
    )


def _register_text_loaders(conn: psycopg.Connection[Any]) -> None:
    """Load every column as its text (psycopg's C text loader), for the cursor path."""
    adapters = conn.adapters
    for info in psycopg.postgres.types:
        adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            adapters.register_loader(info.array_oid, TextLoader)


def _unescape_percent(sql: str) -> str:
    """The compiled text of a statement without parameters has every literal `%` doubled
    (FORMAT style); COPY sends it to the server as is, so undo the doubling."""

    def repl(match: re.Match[str]) -> str:
        if match.group(1) == "%":
            return "%"
        raise InvalidArgument(
            "the statement has a placeholder but no parameters were given; pass one value "
            "per placeholder"
        )

    return re.sub(r"%(.|$)", repl, sql, flags=re.DOTALL)


def _to_server_placeholders(sql: str, count: int) -> str:
    """FORMAT-style text (`%s`, `%%`) -> the server's `$1, $2, ...`; one value per `%s`."""
    seen = 0

    def repl(match: re.Match[str]) -> str:
        nonlocal seen
        char = match.group(1)
        if char == "%":
            return "%"
        if char == "s":
            seen += 1
            return f"${seen}"
        raise InvalidArgument(
            "the statement has a placeholder other than %s; the compiler emits only %s"
        )

    text = _PLACEHOLDER.sub(repl, sql)
    if seen != count:
        raise InvalidArgument(
            f"the statement has {seen} placeholders but {count} parameters were given; pass "
            "one value per placeholder"
        )
    return text


def _configure(conn: psycopg.Connection[Any]) -> None:
    """A new pooled connection: text loaders and the session settings."""
    _register_text_loaders(conn)
    conn.execute(_SESSION_SETTINGS.encode())


class _Session:
    """What the connector keeps per pooled connection: whether the guard statement is
    prepared there, and the query statements it prepared there."""

    __slots__ = ("counter", "guard", "prepared", "seen", "stale")

    def __init__(self) -> None:
        self.guard = False
        self.stale: list[bytes] = []  # evicted prepared statements, deallocated later
        self.seen: OrderedDict[tuple[bytes, tuple[int, ...]], int] = OrderedDict()
        self.prepared: OrderedDict[tuple[bytes, tuple[int, ...]], bytes] = OrderedDict()
        self.counter = 0


def _mark_all_stale(session: _Session) -> None:
    """Forget the connection's prepared statements; the next query deallocates them all."""
    session.guard = False
    session.prepared.clear()
    session.seen.clear()
    session.stale[:] = [b"ALL"]


class _Plan:
    """What a parameterized query sends (see `PostgresConnector._plan`)."""

    __slots__ = (
        "encoding",
        "formats",
        "key",
        "query",
        "statement_timeout",
        "tx",
        "types",
        "values",
    )

    def __init__(
        self,
        query: bytes,
        values: Sequence[Any],
        formats: list[Any],
        types: tuple[int, ...],
        key: tuple[bytes, tuple[int, ...]],
        statement_timeout: bytes | None,
        tx: TransformerProtocol,
        encoding: str,
    ) -> None:
        self.query = query
        self.values = values
        self.formats = formats
        self.types = types
        self.key = key
        self.statement_timeout = statement_timeout
        self.tx = tx
        self.encoding = encoding


class _SmallOutcome:
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


def _send_pipeline(
    pgconn: pq.abc.PGconn,
    session: _Session,
    plan: _Plan,
    name: bytes | None,
    to_prepare: bool,
    *,
    flush: bool,
) -> int:
    """Queue the pipeline: [deallocate stale statements], [prepare the guard], run the
    guard, [prepare the query], describe it, [flush], run it, sync. `name` None runs the
    unnamed statement. Returns how many results come before the query's rows."""
    statement = b"" if name is None else name
    pgconn.enter_pipeline_mode()
    leading = 2 + (not session.guard) + to_prepare + len(session.stale)
    for stale in session.stale:
        pgconn.send_query_params(b"DEALLOCATE " + stale, None)
    if not session.guard:
        pgconn.send_prepare(_GUARD_NAME, _GUARD_SQL, param_types=[_TEXT_OID])
    pgconn.send_query_prepared(
        _GUARD_NAME, [plan.statement_timeout], param_formats=[0], result_format=pq.Format.TEXT
    )
    if to_prepare:
        pgconn.send_prepare(statement, plan.query, param_types=plan.types)
    pgconn.send_describe_prepared(statement)
    if flush:
        pgconn.send_flush_request()
    pgconn.send_query_prepared(
        statement, plan.values, param_formats=plan.formats, result_format=pq.Format.TEXT
    )
    pgconn.pipeline_sync()
    return leading


def _leading_results(
    pgconn: pq.abc.PGconn, leading: int, encoding: str
) -> PQGen[tuple[psycopg.Error | None, pq.abc.PGresult | None]]:
    """Read the results before the query's rows (deallocations, guard, prepares,
    description): the first error, and the description."""
    error: psycopg.Error | None = None
    description: pq.abc.PGresult | None = None
    for _ in range(leading):  # each: one result, then None
        res = yield from generators.fetch(pgconn)
        if (
            res is not None
            and res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
            and error is None
        ):
            error = psycopg.errors.error_from_result(res, encoding=encoding)
        description = res
        while res is not None:
            res = yield from generators.fetch(pgconn)
    return error, description


def _end_pipeline_gen(pgconn: pq.abc.PGconn) -> PQGen[None]:
    """Read what is left of the pipeline up to its sync, then leave pipeline mode."""
    nulls = 0
    while pgconn.pipeline_status != pq.PipelineStatus.OFF:
        res = yield from generators.fetch(pgconn)
        if res is not None and res.status != pq.ExecStatus.PIPELINE_SYNC:
            nulls = 0
            continue
        nulls += res is None
        if res is not None or nulls > 1:
            pgconn.exit_pipeline_mode()


def _small_exchange(
    pgconn: pq.abc.PGconn, session: _Session, plan: _Plan, name: bytes | None, to_prepare: bool
) -> PQGen[_SmallOutcome]:
    """The whole pipeline of a small query, as one generator the event loop drives."""
    leading = _send_pipeline(pgconn, session, plan, name, to_prepare, flush=False)
    yield from generators.send(pgconn)
    error, description = yield from _leading_results(pgconn, leading, plan.encoding)
    results: list[pq.abc.PGresult] = []
    if error is not None:
        yield from _end_pipeline_gen(pgconn)
        return _SmallOutcome(error, None, [], True, leading=True)
    if _CHUNKED:
        pgconn.set_chunked_rows_mode(_SMALL_CHUNK_ROWS)
    else:
        pgconn.set_single_row_mode()
    rows = 0
    while True:
        res = yield from generators.fetch(pgconn)
        if res is None:
            break
        if res.status in _ROWS:
            results.append(res)
            rows += res.ntuples
            if rows >= _SMALL_CHUNK_ROWS:
                return _SmallOutcome(None, description, results, False)
        elif res.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(res, encoding=plan.encoding)
    yield from _end_pipeline_gen(pgconn)
    return _SmallOutcome(error, description, results, True)


async def _in_worker(cleanup: Callable[[], None]) -> None:
    """Run a blocking cleanup in a worker thread and wait for it; a second cancellation
    of the caller stops the waiting, never the cleanup."""
    await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, cleanup))


def _end_pipeline(conn: psycopg.Connection[Any], cancel: Callable[[], None] | None = None) -> None:
    """Read what is left of a pipeline up to its sync and leave pipeline mode; raises
    when the connection cannot be brought back (the caller closes it). `cancel` is
    called first when the server has not sent everything yet (a query still running)."""
    pgconn = conn.pgconn
    with conn.lock:
        if cancel is not None:
            pgconn.consume_input()
            if pgconn.is_busy():
                cancel()
        conn.wait(_end_pipeline_gen(pgconn))


class _DescribeCache:
    def __init__(self, size: int, ttl: float) -> None:
        self._size, self._ttl = size, ttl
        self._items: OrderedDict[str, tuple[float, TextDecoder]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> TextDecoder | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if time.monotonic() - item[0] > self._ttl:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, decoder: TextDecoder) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), decoder)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _CopySource:
    """A read-only file object over COPY data for pyarrow's CSV reader. pyarrow calls
    `read` from its own I/O thread; `shutdown` stops it and waits for a read in flight."""

    closed = False

    def __init__(self, copy: psycopg.Copy, handle: _PgHandle) -> None:
        self._copy = copy
        self._handle = handle
        self._lock = threading.Lock()
        self._stopped = False
        self._eof = False
        self.total = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            if self._stopped or self._eof:
                return b""
            handle = self._handle
            flagged = handle._flag_error() if handle._cancelled or handle._timed_out else None
            if flagged is not None:
                self.error = flagged
                raise flagged
            target = size if size and size > 0 else _COPY_BLOCK
            buf = bytearray()
            read = self._copy.read
            try:
                while len(buf) < target:
                    data = read()
                    if not data:
                        self._eof = True
                        break
                    buf += data
            except BaseException as exc:
                self.error = exc
                raise
            self.total += len(buf)
            return bytes(buf)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True


class _PgHandle(BlockingQueryHandle[psycopg.Connection[Any]]):
    """A query on a pooled connection; the interrupt is a cancel request
    (`Connection.cancel_safe`), re-sent until the reading side lets go of the connection
    (the server ignores a cancel that lands between two statements of a pipeline)."""

    interrupt_every = _CANCEL_RESEND
    interrupt_attempts = _CANCEL_ATTEMPTS

    def __init__(
        self,
        connector: PostgresConnector,
        conn: psycopg.Connection[Any],
        timeout: float | None,
        batch_rows: int,
    ) -> None:
        self._connector = connector
        self._batch_rows = batch_rows
        self._reader: pa.RecordBatchReader | None = None
        self._schema: pa.Schema | None = None
        self._gen: Iterator[pa.RecordBatch] | None = None
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._pipeline = False  # the connection may be in a libpq pipeline of this query
        super().__init__(conn, timeout)

    # -- public -------------------------------------------------------------------------

    @property
    def reader(self) -> pa.RecordBatchReader:
        assert self._reader is not None
        return self._reader

    @property
    def schema(self) -> pa.Schema:
        assert self._schema is not None
        return self._schema  # the cached decoder's: one object per statement

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_deadline()
        gen = self._gen
        if gen is not None and hasattr(gen, "close"):
            try:
                gen.close()
            except ValueError:
                # Another thread is inside the generator: stop the query there; that
                # thread releases the connection when its read fails.
                self._stop_at_source()
                return
        self._release(ok=False)

    def abandon(self) -> None:
        """Stop the query wherever it is and give the connection back (blocking: a
        worker thread's call), for a start that failed or whose caller went away."""
        self.cancel()
        self.close()

    def expire(self) -> None:
        """`abandon` for a query whose timeout passed: reading then says so."""
        self._on_deadline()
        self.close()

    # -- hooks --------------------------------------------------------------------------

    def _start(self, schema: pa.Schema, gen: Iterator[pa.RecordBatch]) -> None:
        self._schema = schema
        self._gen = gen
        self._reader = pa.RecordBatchReader.from_batches(schema, gen)

    def _holds_source(self) -> bool:
        return True  # until released: the reading side may be between two driver calls

    def _send_interrupt(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            conn.cancel_safe(timeout=_CANCEL_TIMEOUT)
        except Exception as exc:  # the read then fails or ends by itself
            log.warning("postgres cancel request failed: %s", type(exc).__name__)
        return True

    def _is_source_timeout(self, exc: BaseException) -> bool:
        # statement_timeout fired at the server before the client's deadline did
        return isinstance(exc, psycopg.errors.QueryCanceled)

    def _translate_error(self, exc: BaseException) -> FabricError:
        return self._connector._map_error(exc)

    def _settle(self, conn: psycopg.Connection[Any], *, ok: bool) -> bool:
        """Finish the pipeline (cancelling a query still running) and the cursor."""
        with self._lock:
            cursor, self._cursor = self._cursor, None
        if self._pipeline and conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            try:
                _end_pipeline(conn, lambda: self._stop_at_source(conn))
            except Exception:
                conn.close()  # the pool drops it
        if cursor is not None:
            try:
                cursor.close()
            except Exception:
                conn.close()  # the pool drops it
        return ok

    def _give_back(self, conn: psycopg.Connection[Any], *, ok: bool) -> None:
        self._connector._give_back(conn, commit=ok)

    # -- result paths -------------------------------------------------------------------

    def _copy_batches(
        self, copy_sql: str, decoder: TextDecoder, cache_key: str
    ) -> Iterator[pa.RecordBatch]:
        ok = False
        conn = self._resource
        assert conn is not None
        try:
            self._check()
            cur = conn.cursor()
            with cur.copy(copy_sql) as copy:
                source = _CopySource(copy, self)
                try:
                    try:
                        reader = decoder.open_stream(source, _COPY_BLOCK)
                    except pa.ArrowInvalid:
                        if source.error is None and source.total == 0:
                            reader = None  # no rows: pyarrow refuses an empty CSV
                        else:
                            raise
                    while reader is not None:
                        self._check()
                        try:
                            batch = reader.read_next_batch()
                        except StopIteration:
                            break
                        yield from slices(decoder.finish(batch), self._batch_rows)
                    self._check()
                except BaseException as exc:
                    if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                        self._stop_at_source()
                    source.shutdown()
                    if isinstance(exc, GeneratorExit):
                        raise
                    if source.error is not None and not isinstance(source.error, FabricError):
                        raise self._map(source.error) from None
                    if isinstance(exc, pa.ArrowException):
                        self._connector._describe_cache.drop(cache_key)
                        raise decoder.error_from_arrow(exc) from None
                    if isinstance(exc, SourceQueryError):
                        self._connector._describe_cache.drop(cache_key)
                    raise self._map(exc) from None
            ok = True
        except GeneratorExit:
            raise
        except FabricError:
            raise
        except Exception as exc:
            raise self._map(exc) from None
        finally:
            self._release(ok=ok)

    def _cursor_batches(
        self, cur: psycopg.ServerCursor[Any], decoder: TextDecoder
    ) -> Iterator[pa.RecordBatch]:
        ok = False
        try:
            while True:
                self._check()
                try:
                    rows = cur.fetchmany(self._batch_rows)
                except Exception as exc:
                    raise self._map(exc) from None
                self._check()
                if rows:
                    yield decoder.from_text_rows(rows)
                if len(rows) < self._batch_rows:
                    break
            ok = True
        finally:
            self._release(ok=ok)

    def _stream_batches(
        self,
        conn: psycopg.Connection[Any],
        tx: TransformerProtocol,
        decoder: TextDecoder,
        session: _Session,
        seed: list[Any] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The rows of the pipelined query, chunk by chunk (at most `batch_rows` rows
        each), then the rest of the pipeline; on an early stop the query is cancelled.
        `seed`: rows already read (their loaders set), which come first."""
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        ok = False
        rows: list[Any] = seed or []
        first = seed is None
        try:
            self._check()
            with conn.lock:
                res = conn.wait(generators.fetch(pgconn))
            while res is not None:
                self._check()
                status = res.status
                if status in _ROWS:
                    tx.set_pgresult(res, set_loaders=first)
                    first = False
                    rows.extend(tx.load_rows(0, res.ntuples, tuple))
                    if len(rows) >= self._batch_rows or _CHUNKED:
                        batch, rows = decoder.from_text_rows(rows), []
                        yield from slices(batch, self._batch_rows)
                elif status == pq.ExecStatus.FATAL_ERROR:
                    error = psycopg.errors.error_from_result(res, encoding=encoding)
                    if error.sqlstate in _STALE_STATEMENT:
                        # a prepared statement went stale: drop them all before the
                        # connection's next query (this one fails, the next one heals)
                        _mark_all_stale(session)
                    raise self._map(error)
                with conn.lock:
                    res = conn.wait(generators.fetch(pgconn))
            if rows:
                yield decoder.from_text_rows(rows)
            _end_pipeline(conn)
            self._check()
            ok = True
        except (GeneratorExit, FabricError):
            raise
        except Exception as exc:
            raise self._map(exc) from None
        finally:
            self._release(ok=ok)  # cancels and drains a pipeline still running


class PostgresConnector(Connector):
    """PostgreSQL through psycopg 3 and psycopg_pool.

    Settings: host (required), port (5432), database (required), user (required),
    sslmode, connect_timeout (s, default 10), application_name (default "fabric"),
    pool_min (1), pool_max (10), pool_timeout (s to wait for a free connection, default
    connect_timeout). The password comes from `config.password` only.
    """

    kind: ClassVar[str] = "postgres"
    dialect: ClassVar[str] = "postgres"
    param_style: ClassVar[ParamStyle] = ParamStyle.FORMAT
    supports_cancel: ClassVar[bool] = True
    max_identifier_length: ClassVar[int] = 63

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        try:
            host = config.get_str("host")
            port = config.get_int("port", 5432)
            database = config.get_str("database")
            user = config.get_str("user")
            connect_timeout = config.get_int("connect_timeout", 10)
            pool_min = config.get_int("pool_min", 1)
            pool_max = config.get_int("pool_max", 10)
            pool_timeout = float(config.settings.get("pool_timeout", connect_timeout or 10))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"invalid PostgreSQL connection setting: {exc}") from None
        missing = [k for k, v in (("host", host), ("database", database), ("user", user)) if not v]
        if missing:
            raise InvalidArgument(f"PostgreSQL connection settings miss {', '.join(missing)}")
        assert pool_min is not None and pool_max is not None and port is not None
        if not (0 <= pool_min <= pool_max and pool_max >= 1):
            raise InvalidArgument("pool_min and pool_max must satisfy 0 <= pool_min <= pool_max")
        if connect_timeout is not None and connect_timeout < 1:
            raise InvalidArgument("connect_timeout must be at least 1 second")
        self._where = f"{host}:{port}"
        kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "dbname": database,
            "user": user,
            "connect_timeout": connect_timeout,
            "application_name": config.get_str("application_name", "fabric"),
        }
        sslmode = config.get_str("sslmode")
        if sslmode:
            kwargs["sslmode"] = sslmode
        if config.password is not None:
            kwargs["password"] = config.password
        self._connect_kwargs = kwargs
        self._pool_min, self._pool_max, self._pool_timeout = pool_min, pool_max, pool_timeout
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self._describe_cache = _DescribeCache(_DESCRIBE_CACHE_SIZE, _DESCRIBE_CACHE_TTL)
        self._decoders: dict[tuple[tuple[bytes | None, int, int], ...], TextDecoder] = {}
        self._sessions: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Session] = (
            weakref.WeakKeyDictionary()
        )
        self._sessions_lock = threading.Lock()

    # -- connections --------------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._closed:
                raise SourceUnavailable("the PostgreSQL connector is closed")
            if self._pool is None:
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    conninfo="",
                    kwargs={**self._connect_kwargs, "autocommit": True},
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    timeout=self._pool_timeout,
                    configure=_configure,
                    name=f"fabric-postgres-{self._where}",
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _acquire(self) -> psycopg.Connection[Any]:
        pool = self._get_pool()
        try:
            return pool.getconn(timeout=self._pool_timeout)
        except PoolTimeout:
            raise SourceUnavailable(
                f"no PostgreSQL connection to {self._where} within {self._pool_timeout:g}s: "
                "the server is down or unreachable, rejects the credentials, or every pooled "
                "connection is busy; check the connection settings and try again"
            ) from None

    def _acquire_now(self) -> psycopg.Connection[Any] | None:
        """A pooled connection that is free now, or None (never waits: the event loop's
        call; a pool still opening, full or down leaves the query to a worker thread)."""
        try:
            pool = self._get_pool()
        except SourceUnavailable:
            return None
        if not pool.get_stats().get("pool_available", 0):
            return None
        try:
            return pool.getconn(timeout=_NO_WAIT)
        except PoolTimeout:
            return None

    def _session(self, conn: psycopg.Connection[Any]) -> _Session:
        with self._sessions_lock:
            session = self._sessions.get(conn)
            if session is None:
                session = self._sessions[conn] = _Session()
            return session

    def _give_back(self, conn: psycopg.Connection[Any], *, commit: bool) -> None:
        pool = self._pool
        try:
            status = conn.pgconn.transaction_status
            if status == pq.TransactionStatus.ACTIVE:
                conn.close()  # a query still runs: never hand that connection out
            elif status != pq.TransactionStatus.IDLE:
                if commit and status == pq.TransactionStatus.INTRANS:
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
        except Exception:
            conn.close()
        if pool is not None:
            pool.putconn(conn)
        else:
            conn.close()

    def _begin(self, conn: psycopg.Connection[Any], timeout: float | None) -> None:
        statements = "BEGIN TRANSACTION READ ONLY; " + _SESSION.format(idle=_IDLE_IN_TRANSACTION_MS)
        if timeout is not None:
            statements += f"; SET LOCAL statement_timeout = {max(1, math.ceil(timeout * 1000))}"
        conn.execute(statements.encode())

    # -- contract -----------------------------------------------------------------------

    def test(self) -> None:
        try:
            with psycopg.connect(**self._connect_kwargs, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            raise self._map_error(exc) from None

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        conn = self._acquire()
        ok = False
        try:
            self._begin(conn, None)
            wanted = list(schemas) if schemas is not None else None
            cur = conn.cursor()
            cur.execute(_COLUMNS_SQL, {"schemas": wanted, "system": list(SYSTEM_SCHEMAS)})
            column_rows = cur.fetchall()
            cur.execute(_CONSTRAINTS_SQL, {"schemas": wanted, "system": list(SYSTEM_SCHEMAS)})
            constraint_rows = cur.fetchall()
            ok = True
        except psycopg.Error as exc:
            raise self._map_error(exc) from None
        finally:
            self._give_back(conn, commit=ok)
        return _build_tables(column_rows, constraint_rows)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        check_execute_arguments(timeout, batch_rows)
        params = tuple(params)
        conn = self._acquire()
        handle = _PgHandle(self, conn, timeout, batch_rows)
        try:
            if not params:
                self._begin(conn, timeout)
                self._start_copy(handle, conn, sql)
            elif conn.pgconn.transaction_status == pq.TransactionStatus.IDLE and _QUERY_START.match(
                sql
            ):
                self._start_stream(handle, conn, sql, params, timeout)
            else:
                self._begin(conn, timeout)
                self._start_cursor(handle, conn, sql, params)
        except BaseException as exc:
            mapped = handle._map(exc) if not isinstance(exc, FabricError) else exc
            handle._release(ok=False)
            if mapped is exc:
                raise
            raise mapped from None
        return handle

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self._describe_cache.clear()

    # -- paths --------------------------------------------------------------------------

    def _start_copy(self, handle: _PgHandle, conn: psycopg.Connection[Any], sql: str) -> None:
        text = _unescape_percent(sql).strip().rstrip(";")
        decoder = self._describe_cache.get(text)
        if decoder is None:
            decoder = self._describe(conn, text)
            self._describe_cache.put(text, decoder)
        if not decoder.columns:
            # no result columns: not a query (a write, refused by the read-only
            # transaction) or a zero-column SELECT; run it as is, there is nothing to read
            conn.execute(text.encode(conn.info.encoding))
            handle._start(decoder.schema, iter(()))
            handle._release(ok=True)
            return
        copy_sql = f"COPY ({text}\n) TO STDOUT (FORMAT csv)"
        handle._start(decoder.schema, handle._copy_batches(copy_sql, decoder, text))

    def _describe(self, conn: psycopg.Connection[Any], text: str) -> TextDecoder:
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        with conn.lock:
            res = pgconn.prepare(b"", text.encode(encoding))
            if res.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(res, encoding=encoding)
            res = pgconn.describe_prepared(b"")
            if res.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(res, encoding=encoding)
        columns = []
        for i in range(res.nfields):
            name = res.fname(i)
            columns.append(
                PgColumn(
                    name=(name or b"").decode(encoding),
                    type_oid=res.ftype(i),
                    typmod=res.fmod(i),
                )
            )
        return TextDecoder(columns)

    def _plan(
        self,
        conn: psycopg.Connection[Any],
        sql: str,
        params: tuple[Any, ...],
        timeout: float | None,
    ) -> _Plan:
        """What a parameterized query sends: its text with server placeholders, the values
        dumped by psycopg, their types and formats, and the statement timeout."""
        encoding = conn.info.encoding
        query = _to_server_placeholders(sql, len(params)).encode(encoding)
        tx = Transformer.from_context(conn)
        try:
            values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        except (psycopg.ProgrammingError, psycopg.DataError, TypeError, ValueError) as exc:
            if getattr(exc, "sqlstate", None):
                raise
            raise InvalidArgument(_PARAMS_MISMATCH) from None
        types = tuple(tx.types or ())
        statement_timeout = (
            None if timeout is None else str(max(1, math.ceil(timeout * 1000))).encode()
        )
        return _Plan(
            query,
            values,
            list(tx.formats or ()),
            types,
            (query, types),
            statement_timeout,
            tx,
            encoding,
        )

    def _start_stream(
        self,
        handle: _PgHandle,
        conn: psycopg.Connection[Any],
        sql: str,
        params: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        """A query with parameters in one round trip: a libpq pipeline of the guard
        statement, the query (the extended protocol, values bound by the server, the
        statement prepared on the connection once it repeats; a statement to prepare is
        prepared in the same pipeline) and a sync; the rows then come in chunks of
        `batch_rows` (libpq chunked-rows mode), so memory stays bounded. The deadline
        watcher enforces the whole-query timeout; statement_timeout is a backstop."""
        session = self._session(conn)
        plan = self._plan(conn, sql, params, timeout)
        pgconn = conn.pgconn
        handle._pipeline = True
        for attempt in (0, 1):
            name = self._prepared_name(session, plan.key) if attempt == 0 else None
            to_prepare = name is None or plan.key not in session.prepared
            with conn.lock:
                # the flush request makes the server send the description before it runs
                # the query, so execute() returns while the query runs
                leading = _send_pipeline(pgconn, session, plan, name, to_prepare, flush=True)
                conn.wait(generators.send(pgconn))
                error, description = conn.wait(_leading_results(pgconn, leading, plan.encoding))
                if error is None:
                    if _CHUNKED:
                        pgconn.set_chunked_rows_mode(handle._batch_rows)
                    else:
                        pgconn.set_single_row_mode()
            if error is None:
                session.guard = True
                session.stale.clear()
                if to_prepare and name is not None:
                    self._remember_prepared(conn, session, plan.key, name)
                break
            _end_pipeline(conn)
            # What the pipeline prepared before the error exists on the server (prepared
            # statements outlive a failed transaction), or a statement went stale: the
            # next pipeline deallocates them all first, or the guard's PREPARE would fail
            # from then on.
            _mark_all_stale(session)
            if error.sqlstate in _STALE_STATEMENT and attempt == 0:
                # a prepared statement is gone (DEALLOCATE) or its result type changed
                # (cached plan must not change result type): run the text once more
                continue
            raise error
        if description is None:
            raise InternalError("the PostgreSQL server sent no description of the result")
        decoder = self._decoder(description, plan.encoding)
        handle._start(decoder.schema, handle._stream_batches(conn, plan.tx, decoder, session))

    async def execute_small(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int,
    ) -> QueryHandle | None:
        """The parameterized path, driven by the event loop (psycopg's `wait_async` on the
        connection's socket) for a statement of at most `max_rows` rows: the same
        pipeline, guard and prepared statements as `execute`, without a flush request
        (the whole answer comes in one read), the rows decoded at once. None, before
        anything is sent, when a worker thread must do it: no parameters (the COPY
        path), not a plain query, or no free pooled connection at this moment; None too
        when the server says a prepared statement went stale (this query then runs in a
        worker thread; the pipeline of the connection's next query deallocates them). If
        more rows come than `max_rows` allows (a
        stale primary key in the catalog), the handle streams the rest from a worker
        thread like `execute`'s. A caller that goes away cancels the query at the server
        and cleans up the connection in a worker thread."""
        check_execute_arguments(timeout, max(1, max_rows))
        params = tuple(params)
        if not params or not _QUERY_START.match(sql) or max_rows > _SMALL_MAX_ROWS:
            return None
        conn = self._acquire_now()
        if conn is None:
            return None
        session = self._session(conn)
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self._give_back, conn, commit=False)
            )
            return None
        try:
            plan = self._plan(conn, sql, params, timeout)
            name = self._prepared_name(session, plan.key)
            to_prepare = name is None or plan.key not in session.prepared
            pgconn = conn.pgconn
            # No handle (and no deadline-watcher entry) on the way of a successful lookup:
            # the loop's own timer bounds it, a handle is made only to clean up.
            async with asyncio.timeout(timeout):
                outcome = await waiting.wait_async(
                    _small_exchange(pgconn, session, plan, name, to_prepare),
                    pgconn.socket,
                    interval=_WAIT_INTERVAL,
                )
        except BaseException as exc:
            # Stopped part-way: what the pipeline got to prepare is unknown, so the
            # connection's next pipeline deallocates it all first.
            _mark_all_stale(session)
            handle = self._cleanup_handle(conn, timeout)
            if isinstance(exc, asyncio.CancelledError):
                await _in_worker(handle.abandon)
                raise
            if isinstance(exc, TimeoutError):
                await _in_worker(handle.expire)
                raise handle._deadline_error() from None
            await _in_worker(handle.abandon)
            if isinstance(exc, FabricError):
                raise
            raise handle._map(exc) from None
        try:
            return self._small_result(conn, session, plan, name, to_prepare, outcome, timeout)
        except BaseException:
            if not outcome.released:
                await _in_worker(self._cleanup_handle(conn, timeout).abandon)
            raise

    def _cleanup_handle(self, conn: psycopg.Connection[Any], timeout: float | None) -> _PgHandle:
        """A handle over a small query's connection, to cancel it and give it back."""
        handle = _PgHandle(self, conn, timeout, _SMALL_CHUNK_ROWS)
        handle._pipeline = True
        return handle

    def _small_result(
        self,
        conn: psycopg.Connection[Any],
        session: _Session,
        plan: _Plan,
        name: bytes | None,
        to_prepare: bool,
        outcome: _SmallOutcome,
        timeout: float | None,
    ) -> QueryHandle | None:
        error = outcome.error
        if error is None or not outcome.leading:
            # Everything before the rows went through: the guard and the statement are
            # prepared on the server now, whatever the rows do.
            session.guard = True
            session.stale.clear()
            if to_prepare and name is not None:
                self._remember_prepared(conn, session, plan.key, name)
        if error is not None:
            if outcome.leading:
                # Before the rows: what the pipeline prepared may exist on the server or
                # be stale; the connection's next pipeline deallocates it all first.
                _mark_all_stale(session)
            handle = self._cleanup_handle(conn, timeout)
            mapped = handle._map(error)
            outcome.released = True
            handle._release(ok=False)  # the pipeline is over: no I/O
            if outcome.leading and error.sqlstate in _STALE_STATEMENT:
                return None  # a stale prepared statement: this one runs in a worker
            raise mapped
        if outcome.description is None:
            raise InternalError("the PostgreSQL server sent no description of the result")
        decoder = self._decoder(outcome.description, plan.encoding)
        rows: list[Any] = []
        first = True
        for res in outcome.results:
            plan.tx.set_pgresult(res, set_loaders=first)
            first = False
            rows.extend(plan.tx.load_rows(0, res.ntuples, tuple))
        if not outcome.complete:
            # More rows than the statement was proven to return: stream the rest from a
            # worker thread, these rows first.
            handle = self._cleanup_handle(conn, timeout)
            handle._start(
                decoder.schema, handle._stream_batches(conn, plan.tx, decoder, session, rows)
            )
            outcome.released = True  # the handle owns the connection now
            return handle
        try:
            batches = [decoder.from_text_rows(rows)] if rows else []
        finally:
            outcome.released = True
            self._give_back(conn, commit=True)  # idle after the sync: no I/O
        return BufferedHandle(decoder.schema, batches)

    def _prepared_name(self, session: _Session, key: tuple[bytes, tuple[int, ...]]) -> bytes | None:
        """The name of the statement on this connection: prepared already, or to prepare
        now (its second execution there); None to run it unprepared."""
        name = session.prepared.get(key)
        if name is not None:
            session.prepared.move_to_end(key)
            return name
        count = session.seen.pop(key, 0) + 1
        if count < _PREPARE_AFTER:
            session.seen[key] = count
            while len(session.seen) > _SEEN_MAX:
                session.seen.popitem(last=False)
            return None
        session.counter += 1
        return f"fabric_{session.counter}".encode()

    def _remember_prepared(
        self,
        conn: psycopg.Connection[Any],
        session: _Session,
        key: tuple[bytes, tuple[int, ...]],
        name: bytes,
    ) -> None:
        session.prepared[key] = name
        while len(session.prepared) > _PREPARED_MAX:
            _, old = session.prepared.popitem(last=False)
            session.stale.append(old)

    def _decoder(self, res: pq.abc.PGresult, encoding: str) -> TextDecoder:
        """The decoder of a result's description, cached (building one costs more than a
        point query)."""
        key = tuple((res.fname(i), res.ftype(i), res.fmod(i)) for i in range(res.nfields))
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = TextDecoder(
                [PgColumn((name or b"").decode(encoding), oid, mod) for name, oid, mod in key]
            )
            if len(self._decoders) >= _DECODER_CACHE_SIZE:
                self._decoders.clear()
            self._decoders[key] = decoder
        return decoder

    def _start_cursor(
        self,
        handle: _PgHandle,
        conn: psycopg.Connection[Any],
        sql: str,
        params: tuple[Any, ...],
    ) -> None:
        cur = conn.cursor(name=_CURSOR_NAME)
        handle._cursor = cur
        try:
            cur.execute(sql, params)
        except (psycopg.ProgrammingError, TypeError) as exc:
            if getattr(exc, "sqlstate", None):
                raise
            raise InvalidArgument(_PARAMS_MISMATCH) from None
        res = cur.pgresult
        encoding = conn.info.encoding
        decoder = TextDecoder(
            [
                PgColumn((res.fname(i) or b"").decode(encoding), res.ftype(i), res.fmod(i))
                for i in range(res.nfields)
            ]
            if res is not None
            else []
        )
        handle._start(decoder.schema, handle._cursor_batches(cur, decoder))

    # -- errors -------------------------------------------------------------------------

    def _map_error(self, exc: BaseException) -> FabricError:
        if isinstance(exc, FabricError):
            return exc
        if isinstance(exc, PoolTimeout):
            return SourceUnavailable(f"no PostgreSQL connection to {self._where} in time")
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300"):
                return SourceUnavailable(
                    f"PostgreSQL at {self._where} is unavailable: {_condition(sqlstate)} "
                    f"(SQLSTATE {sqlstate}); try again later"
                )
            if sqlstate.startswith("28"):
                return SourceUnavailable(
                    f"PostgreSQL at {self._where} refused the credentials: "
                    f"{_condition(sqlstate)} (SQLSTATE {sqlstate}); check the user and password"
                )
            if sqlstate == "57014":
                return SourceQueryError(
                    "the query was cancelled at the source by someone else: query_canceled "
                    "(SQLSTATE 57014)",
                    sqlstate=sqlstate,
                )
            return _source_error(sqlstate)
        text = str(exc).lower()  # inspected only, never passed on
        if isinstance(exc, psycopg.OperationalError) and (
            "authentication" in text or "role" in text or "password" in text
        ):
            return SourceUnavailable(
                f"PostgreSQL at {self._where} refused the credentials; check the user and password"
            )
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
            return SourceUnavailable(
                f"PostgreSQL at {self._where} cannot be reached or dropped the connection; "
                "check that it is up and the settings are right"
            )
        if isinstance(exc, psycopg.Error):
            return SourceQueryError(
                f"the PostgreSQL driver refused the query ({type(exc).__name__})"
            )
        return InternalError(f"unexpected error in the PostgreSQL connector ({type(exc).__name__})")


_COLUMNS_SQL = """
SELECT n.nspname, c.relname, c.relkind, a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)::int8,
       (CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END)::int8,
       (a.attnotnull OR (t.typtype = 'd' AND t.typnotnull))
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND n.nspname <> ALL (%(system)s::text[])
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
"""

_CONSTRAINTS_SQL = """
SELECT n.nspname, c.relname, con.contype, con.conname,
       pg_catalog.array_to_json(ARRAY(
           SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
           ORDER BY k.ord))::text,
       rn.nspname, rc.relname,
       pg_catalog.array_to_json(ARRAY(
           SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
           ORDER BY k.ord))::text
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype IN ('p', 'f')
  AND n.nspname <> ALL (%(system)s::text[])
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY n.nspname, c.relname, con.conname
"""


def _build_tables(column_rows: list[Any], constraint_rows: list[Any]) -> list[TableInfo]:
    import json

    tables = TableAssembler()
    for schema, table, relkind, name, source_type, oid, typmod, notnull in column_rows:
        kind = TableKind.VIEW if relkind in ("v", "m") else TableKind.TABLE
        tables.add_column(
            schema,
            table,
            kind,
            ColumnInfo(
                name=name,
                source_type=source_type,
                arrow_type=pg_arrow_type(int(oid), int(typmod)),
                nullable=notnull not in ("t", True),
            ),
        )
    for schema, table, contype, name, cols, ref_schema, ref_table, ref_cols in constraint_rows:
        if contype == "p":
            for column in json.loads(cols):
                tables.add_primary_key_column(schema, table, column)
        else:
            for column, referenced in zip(json.loads(cols), json.loads(ref_cols), strict=True):
                tables.add_foreign_key_column(
                    schema, table, name, column, ref_schema, ref_table, referenced
                )
    return tables.tables()
