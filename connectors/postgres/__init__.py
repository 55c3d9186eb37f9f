"""PostgreSQL connector: psycopg 3 with a bounded connection pool, results into Arrow.

Every query runs read-only with `statement_timeout` (from the query's timeout),
`idle_in_transaction_session_timeout`, `TimeZone = UTC`, `DateStyle = ISO`,
`IntervalStyle = iso_8601`, `bytea_output = hex` and `extra_float_digits = 1` set for its
own transaction only, so the text form of every value is the one `connectors.postgres.decode`
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

A query still holding its connection 2 s after it was told to stop (a server that
answers neither it nor the cancel request) has the connection's socket shut down under
psycopg: the reading thread returns at once, and the connection is discarded. Every wait
on the server goes through psycopg's non-blocking protocol (libpq's blocking describe
call holds the GIL while it waits).

Dead connections: a pooled connection whose socket has something to read while idle
(the server ended the session: a restart, a terminate, an idle timeout) is discarded
before use and another taken; one that fails while the query is being started (before
`execute` returns, so before anything reached the caller) because the connection is
gone is discarded and the query runs once more on a fresh connection. A failed attempt
to open a connection is retried within a second, then left to the next query.

Errors: connection failures, authentication failures and pool timeouts are
SourceUnavailable; a cancel is Cancelled, a timeout DeadlineExceeded; any other database
error is SourceQueryError carrying the SQLSTATE and the condition name only, never the
server's message (it can echo values) and never the password.

The package's modules: `connector` (settings, the pool, which path a query takes),
`session` (session settings and prepared statements per connection), `pipeline` (the
libpq pipeline of a parameterized query), `worker` (the worker-thread paths and their
handle), `small` (the key-lookup path), `decode` (text -> Arrow), `introspection`
(discovery) and `errors`.
"""

from __future__ import annotations

from connectors.postgres.connector import PostgresConnector

__all__ = ["PostgresConnector"]
