"""The worker-thread path of the PostgreSQL connector: a query started in a worker
thread (COPY without parameters, the pipeline with them, a server cursor otherwise) and
the handle that reads it there, on the blocking-driver state machine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
import pyarrow as pa
from psycopg import generators, pq
from psycopg.abc import Transformer as TransformerProtocol

from connectors.batches import slices
from connectors.blocking import BlockingQueryHandle
from connectors.placeholders import rewrite_format_placeholders
from connectors.postgres.decode import PgColumn, TextDecoder
from connectors.postgres.pipeline import (
    CHUNKED,
    PARAMS_MISMATCH,
    ROW_RESULTS,
    STALE_STATEMENT,
    end_pipeline,
    leading_results,
    make_plan,
    send_pipeline,
)
from connectors.postgres.session import Session
from connectors.sockets import sever
from fabric.errors import FabricError, InternalError, InvalidArgument, SourceQueryError

if TYPE_CHECKING:
    from connectors.postgres.connector import PostgresConnector

log = logging.getLogger(__name__)

_CANCEL_TIMEOUT = 5.0
_CANCEL_RESEND = 0.25
"""Seconds between cancel requests while a cancelled query still holds its connection:
the server ignores a cancel that lands between two statements of a pipeline."""
_CANCEL_ATTEMPTS = 40
_SEVER_AFTER = 2.0
"""Seconds a query told to stop may keep its connection busy before the connection is
cut off: a cancelled query lets go within milliseconds unless the server stopped
answering (then the cancel request cannot reach it either)."""
_LOST_STATES = ("08", "57P01", "57P02", "57P03")
"""SQLSTATEs (classes) of a session the server ended or a link that broke."""
_CURSOR_NAME = "fabric_rows"
_COPY_BLOCK = 1 << 21


class CopySource:
    """A read-only file object over COPY data for pyarrow's CSV reader. pyarrow calls
    `read` from its own I/O thread; `shutdown` stops it and waits for a read in flight."""

    closed = False

    def __init__(self, copy: psycopg.Copy, handle: PgHandle) -> None:
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


class PgHandle(BlockingQueryHandle[psycopg.Connection[Any]]):
    """A query on a pooled connection; the interrupt is a cancel request
    (`Connection.cancel_safe`), re-sent until the reading side lets go of the connection
    (the server ignores a cancel that lands between two statements of a pipeline)."""

    interrupt_every = _CANCEL_RESEND
    interrupt_attempts = _CANCEL_ATTEMPTS
    sever_after = _SEVER_AFTER

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
        self._decoder: TextDecoder | None = None
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._pipeline = False  # the connection may be in a libpq pipeline of this query
        super().__init__(conn, timeout)

    # -- public -------------------------------------------------------------------------

    @property
    def reader(self) -> pa.RecordBatchReader:
        """The result's reader. When a column's type depends on the values (numeric sized
        by its values), the first access reads the first batch: call it where reading
        is, never on the event loop."""
        if self._reader is None:
            assert self._decoder is not None and self._gen is not None
            self._schema, batches = self._decoder.sized_stream(self._gen)
            self._reader = pa.RecordBatchReader.from_batches(self._schema, batches)
        return self._reader

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            return self.reader.schema
        return self._schema  # the cached decoder's: one object per statement

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
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

    def _start(
        self,
        decoder: TextDecoder,
        gen: Iterator[pa.RecordBatch],
        sample: pa.RecordBatch | None = None,
    ) -> None:
        """Take the result's batches; `sample`: its first rows, already read, from which
        value-sized columns get their types at once (the reader is then ready without
        reading). `gen` stays what `close` stops."""
        self._gen = gen
        self._decoder = decoder
        if not decoder.sized or sample is not None:
            self._schema, batches = decoder.sized_stream(gen, sample)
            self._reader = pa.RecordBatchReader.from_batches(self._schema, batches)

    def _holds_source(self) -> bool:
        return True  # until released: the reading side may be between two driver calls

    def _send_interrupt(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            conn.cancel_safe(timeout=_CANCEL_TIMEOUT)
        except Exception as exc:  # the read then fails or ends by itself
            log.warning("postgres cancel request failed: %s", type(exc).__name__)
        return True

    def _sever(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            fd = conn.pgconn.socket
        except psycopg.Error:
            return False  # already closed
        severed = sever(fd)
        if severed:
            log.warning(
                "a PostgreSQL query did not let go of its connection after it was told to "
                "stop (the server is not answering); the connection was cut off"
            )
        return severed

    def _is_source_timeout(self, exc: BaseException) -> bool:
        # statement_timeout fired at the server before the client's deadline did
        return isinstance(exc, psycopg.errors.QueryCanceled)

    def _translate_error(self, exc: BaseException) -> FabricError:
        return self._connector._map_error(exc)

    def _settle(self, conn: psycopg.Connection[Any], *, ok: bool) -> bool:
        """Finish the pipeline (cancelling a query still running) and the cursor, then
        end the transaction: all of it while the deadline (and a cut-off once the query
        was told to stop) still guards against a server that stopped answering."""
        with self._lock:
            cursor, self._cursor = self._cursor, None
        if self._pipeline and conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            try:
                end_pipeline(conn, lambda: self._stop_at_source(conn))
            except Exception:
                conn.close()  # the pool drops it
        if cursor is not None:
            try:
                cursor.close()
            except Exception:
                conn.close()  # the pool drops it
        self._connector._reset(conn, commit=ok and not self._interrupted)
        return ok

    def _give_back(self, conn: psycopg.Connection[Any], *, ok: bool) -> None:
        self._connector._put_back(conn)  # settled already: no I/O

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
                source = CopySource(copy, self)
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
                        self._connector._forget_decoder(cache_key)
                        raise decoder.error_from_arrow(exc) from None
                    if isinstance(exc, SourceQueryError):
                        self._connector._forget_decoder(cache_key)
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
        session: Session,
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
                if status in ROW_RESULTS:
                    tx.set_pgresult(res, set_loaders=first)
                    first = False
                    rows.extend(tx.load_rows(0, res.ntuples, tuple))
                    if len(rows) >= self._batch_rows or CHUNKED:
                        batch, rows = decoder.from_text_rows(rows), []
                        yield from slices(batch, self._batch_rows)
                elif status == pq.ExecStatus.FATAL_ERROR:
                    error = psycopg.errors.error_from_result(res, encoding=encoding)
                    if error.sqlstate in STALE_STATEMENT:
                        # a prepared statement went stale: drop them all before the
                        # connection's next query (this one fails, the next one heals)
                        session.mark_all_stale()
                    raise self._map(error)
                with conn.lock:
                    res = conn.wait(generators.fetch(pgconn))
            if rows:
                yield decoder.from_text_rows(rows)
            end_pipeline(conn)
            self._check()
            ok = True
        except (GeneratorExit, FabricError):
            raise
        except Exception as exc:
            raise self._map(exc) from None
        finally:
            self._release(ok=ok)  # cancels and drains a pipeline still running


def connection_lost(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    """Whether `exc` says the connection itself is gone (the session ended at the server,
    the link broke), not that the query failed."""
    if isinstance(exc, FabricError):
        return False
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate:
        return sqlstate.startswith(_LOST_STATES)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError) and (
        conn.closed or conn.pgconn.status == pq.ConnStatus.BAD
    )


def result_columns(res: pq.abc.PGresult, encoding: str) -> list[PgColumn]:
    """The columns a result (or a statement's description) declares."""
    return [
        PgColumn((res.fname(i) or b"").decode(encoding), res.ftype(i), res.fmod(i))
        for i in range(res.nfields)
    ]


def describe(conn: psycopg.Connection[Any], text: str) -> TextDecoder:
    """The decoder of a statement without parameters, from the server's description of
    it as the unnamed prepared statement."""
    pgconn = conn.pgconn
    encoding = conn.info.encoding
    # Sent and awaited through psycopg's non-blocking protocol, never with libpq's
    # blocking PQprepare / PQdescribePrepared: psycopg's binary build holds the GIL in
    # PQdescribePrepared, so a server that stopped answering there would stop every
    # thread of the process, the event loop included.
    with conn.lock:
        pgconn.send_prepare(b"", text.encode(encoding))
        res = conn.wait(generators.execute(pgconn))[-1]
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(res, encoding=encoding)
        pgconn.send_describe_prepared(b"")
        res = conn.wait(generators.execute(pgconn))[-1]
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(res, encoding=encoding)
    return TextDecoder(result_columns(res, encoding))


def start_copy(
    connector: PostgresConnector, handle: PgHandle, conn: psycopg.Connection[Any], sql: str
) -> None:
    """A statement without parameters, in the transaction `begin` opened: `COPY (sql) TO
    STDOUT (FORMAT csv)`, parsed block by block by pyarrow's CSV reader."""
    # COPY sends the text as is: the doubled literal `%`s of FORMAT style are undone
    text = rewrite_format_placeholders(sql, 0, str).strip().rstrip(";")
    decoder = connector._statement_decoder(conn, text)
    if not decoder.columns:
        # no result columns: not a query (a write, refused by the read-only
        # transaction) or a zero-column SELECT; run it as is, there is nothing to read
        conn.execute(text.encode(conn.info.encoding))
        handle._start(decoder, iter(()), decoder.empty())
        handle._release(ok=True)
        return
    copy_sql = f"COPY ({text}\n) TO STDOUT (FORMAT csv)"
    handle._start(decoder, handle._copy_batches(copy_sql, decoder, text))


def start_stream(
    connector: PostgresConnector,
    handle: PgHandle,
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
    session = connector._session(conn)
    plan = make_plan(conn, sql, params, timeout)
    pgconn = conn.pgconn
    handle._pipeline = True
    for attempt in (0, 1):
        name = session.prepared_name(plan.key) if attempt == 0 else None
        to_prepare = name is None or plan.key not in session.prepared
        with conn.lock:
            # the flush request makes the server send the description before it runs
            # the query, so execute() returns while the query runs
            leading = send_pipeline(pgconn, session, plan, name, to_prepare, flush=True)
            conn.wait(generators.send(pgconn))
            error, description = conn.wait(leading_results(pgconn, leading, plan.encoding))
            if error is None:
                if CHUNKED:
                    pgconn.set_chunked_rows_mode(handle._batch_rows)
                else:
                    pgconn.set_single_row_mode()
        if error is None:
            session.guard = True
            session.stale.clear()
            if to_prepare and name is not None:
                session.remember_prepared(plan.key, name)
            break
        end_pipeline(conn)
        # What the pipeline prepared before the error exists on the server (prepared
        # statements outlive a failed transaction), or a statement went stale: the
        # next pipeline deallocates them all first, or the guard's PREPARE would fail
        # from then on.
        session.mark_all_stale()
        if error.sqlstate in STALE_STATEMENT and attempt == 0:
            # a prepared statement is gone (DEALLOCATE) or its result type changed
            # (cached plan must not change result type): run the text once more
            continue
        raise error
    if description is None:
        raise InternalError("the PostgreSQL server sent no description of the result")
    decoder = connector._decoder(description, plan.encoding)
    handle._start(decoder, handle._stream_batches(conn, plan.tx, decoder, session))


def start_cursor(
    handle: PgHandle, conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]
) -> None:
    """Any other statement with parameters, in the transaction `begin` opened: a server
    cursor (`DECLARE ... CURSOR FOR sql`), fetched `batch_rows` at a time."""
    cur = conn.cursor(name=_CURSOR_NAME)
    handle._cursor = cur
    try:
        cur.execute(sql, params)
    except (psycopg.ProgrammingError, TypeError) as exc:
        if getattr(exc, "sqlstate", None):
            raise
        raise InvalidArgument(PARAMS_MISMATCH) from None
    res = cur.pgresult
    decoder = TextDecoder(result_columns(res, conn.info.encoding) if res is not None else [])
    handle._start(decoder, handle._cursor_batches(cur, decoder))
