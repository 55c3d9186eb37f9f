"""The libpq pipeline of a parameterized PostgreSQL query: what it sends (the guard
statement, the prepared or unnamed query, a sync) and how its results are read."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import capabilities, generators, pq
from psycopg.abc import PQGen
from psycopg.abc import Transformer as TransformerProtocol
from psycopg.adapt import PyFormat, Transformer

from connectors.placeholders import rewrite_format_placeholders
from connectors.postgres.session import IDLE_IN_TRANSACTION_MS, Session
from fabric.errors import InvalidArgument

# Sent before every parameterized query, in the same pipeline (one round trip) and the
# same implicit transaction: that transaction is read-only whatever the session's
# defaults, its statement_timeout is the query's ($1; NULL keeps the server's), and the
# text forms are the ones `connectors.postgres.decode` parses. All transaction-local, like
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
) % IDLE_IN_TRANSACTION_MS
_TEXT_OID = 25
CHUNKED = capabilities.has_stream_chunked()
ROW_RESULTS = (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.SINGLE_TUPLE)
# A statement that can run outside an explicit transaction: a query (the session is
# read-only by default, so a data-modifying WITH is refused), never CALL or DO (which can
# end transactions). Leading comments may not nest; anything unsure takes the
# transaction path.
QUERY_START = re.compile(
    r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*(?:(?!/\*).)*?\*/|\()*(?:select|with|values|table)\b",
    re.IGNORECASE | re.DOTALL,
)
PARAMS_MISMATCH = (
    "the parameters do not match the statement (one value per placeholder, of a supported "
    "type: int, float, Decimal, str, bool, date, time, datetime, bytes, None)"
)
STALE_STATEMENT = ("0A000", "26000")  # result type changed; prepared statement gone


class Plan:
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


def make_plan(
    conn: psycopg.Connection[Any],
    sql: str,
    params: tuple[Any, ...],
    timeout: float | None,
) -> Plan:
    """What a parameterized query sends: its text with server placeholders, the values
    dumped by psycopg, their types and formats, and the statement timeout."""
    encoding = conn.info.encoding
    query = rewrite_format_placeholders(sql, len(params), lambda n: f"${n}").encode(encoding)
    tx = Transformer.from_context(conn)
    try:
        values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
    except (psycopg.ProgrammingError, psycopg.DataError, TypeError, ValueError) as exc:
        if getattr(exc, "sqlstate", None):
            raise
        raise InvalidArgument(PARAMS_MISMATCH) from None
    types = tuple(tx.types or ())
    statement_timeout = None if timeout is None else str(max(1, math.ceil(timeout * 1000))).encode()
    return Plan(
        query,
        values,
        list(tx.formats or ()),
        types,
        (query, types),
        statement_timeout,
        tx,
        encoding,
    )


def send_pipeline(
    pgconn: pq.abc.PGconn,
    session: Session,
    plan: Plan,
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


def leading_results(
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


def end_pipeline_gen(pgconn: pq.abc.PGconn) -> PQGen[None]:
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


def end_pipeline(conn: psycopg.Connection[Any], cancel: Callable[[], None] | None = None) -> None:
    """Read what is left of a pipeline up to its sync and leave pipeline mode; raises
    when the connection cannot be brought back (the caller closes it). `cancel` is
    called first when the server has not sent everything yet (a query still running)."""
    pgconn = conn.pgconn
    with conn.lock:
        if cancel is not None:
            pgconn.consume_input()
            if pgconn.is_busy():
                cancel()
        conn.wait(end_pipeline_gen(pgconn))
