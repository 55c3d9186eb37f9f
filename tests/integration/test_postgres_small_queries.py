"""`PostgresConnector.execute_small`: a key lookup driven by the event loop gives exactly
what `execute` gives (values, types, errors), stops at the server when its caller goes
away or its timeout passes, heals a stale prepared statement, and never waits for a
pooled connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from connectors.base import ConnectorConfig, QueryHandle
from connectors.postgres import PostgresConnector
from fabric.errors import DeadlineExceeded, InvalidArgument, SourceQueryError
from tests.integration.test_postgres_connector import ROWS, Env, read, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def env(postgres_url: str) -> Iterator[Env]:
    e = Env(postgres_url)
    try:
        # The pool opens on first use, in the background; until a connection is free,
        # execute_small leaves the query to execute (tested below). Open it first.
        read(e.connector.execute("SELECT %s::int AS one", (1,)))
        yield e
    finally:
        e.close()


@pytest.fixture
def typed(env: Env) -> Env:
    env.admin.execute(
        f"CREATE TABLE {env.schema}.t (id int4 PRIMARY KEY, s int2, b int8, m numeric(10,2), "
        "u numeric, txt text, e varchar(10), d date, ts timestamp, tz timestamptz, ok bool, "
        "c char(3), f float8, r real, iv interval, by bytea, tm time)"
    )
    with env.admin.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {env.schema}.t VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
            "0.1, 1.5, '1 day 02:00:00', '\\x00ff', '04:05:06.5')",
            ROWS,
        )
    return env


def small(
    env: Env, sql: str, params: tuple[Any, ...], *, timeout: float | None = 30, max_rows: int = 1
) -> QueryHandle | None:
    return asyncio.run(env.connector.execute_small(sql, params, timeout=timeout, max_rows=max_rows))


def test_a_key_lookup_gives_what_execute_gives(typed: Env) -> None:
    narrow = f"SELECT id, s, b, m, u, txt, e, d, ts, tz, ok, c, f FROM {typed.schema}.t"
    wide = f"SELECT * FROM {typed.schema}.t"  # real, interval, bytea, time: Arrow's route
    for sql in (narrow, wide):
        for key in (1, 2, 3, 4):  # 4: no such row
            handle = small(typed, f"{sql} WHERE id = %s", (key,))
            assert handle is not None and handle.buffered
            got = read(handle)
            expected = read(typed.connector.execute(f"{sql} WHERE id = %s", (key,)))
            assert got.schema == expected.schema
            assert got.equals(expected), key
            assert got.num_rows == (0 if key == 4 else 1)


def test_the_statement_is_prepared_on_repeat_and_the_connection_stays_healthy(typed: Env) -> None:
    sql = f"SELECT id, txt FROM {typed.schema}.t WHERE id = %s"
    for _ in range(3):  # unprepared, prepared now, prepared
        for key in (1, 3):
            handle = small(typed, sql, (key,))
            assert handle is not None
            assert read(handle).column("id").to_pylist() == [key]
    # the pooled connections are idle and answer the blocking path as well
    assert read(typed.connector.execute(sql, (3,))).column("id").to_pylist() == [3]
    assert typed.active() == 0


def test_errors_are_the_same_and_leave_no_trace(typed: Env) -> None:
    sql = f"SELECT id / %s AS q FROM {typed.schema}.t WHERE id = %s"
    with pytest.raises(SourceQueryError) as small_error:
        small(typed, sql, (0, 1))
    with pytest.raises(SourceQueryError) as thread_error:
        read(typed.connector.execute(sql, (0, 1)))
    assert small_error.value.sqlstate == thread_error.value.sqlstate == "22012"
    assert small_error.value.message == thread_error.value.message
    with pytest.raises(InvalidArgument):
        small(typed, sql, (object(), 1))
    handle = small(typed, sql, (1, 1))
    assert handle is not None and read(handle).column("q").to_pylist() == [1]


def test_a_pool_still_opening_is_left_to_execute(postgres_url: str) -> None:
    fresh = Env(postgres_url)
    try:
        assert small(fresh, "SELECT %s::int AS one", (1,)) is None
    finally:
        fresh.close()


def test_what_it_does_not_take_is_left_to_execute(typed: Env) -> None:
    assert small(typed, f"SELECT id FROM {typed.schema}.t WHERE id = 1", ()) is None  # COPY
    assert small(typed, "CALL nothing(%s)", (1,)) is None  # not a plain query
    assert (
        small(typed, f"SELECT id FROM {typed.schema}.t WHERE id = %s", (1,), max_rows=10_000)
        is None
    )


def test_more_rows_than_proven_stream_from_a_worker(env: Env) -> None:
    """A stale key in the catalog must not lose rows: the rest comes like `execute`'s."""
    env.admin.execute(f"CREATE TABLE {env.schema}.many AS SELECT i FROM generate_series(1, 3000) i")
    sql = f"SELECT i FROM {env.schema}.many WHERE i > %s ORDER BY i"
    handle = small(env, sql, (0,))
    assert handle is not None and not handle.buffered
    table = read(handle)  # reading blocks: what a worker thread does
    assert table.column("i").to_pylist() == list(range(1, 3001))
    assert env.active() == 0


def test_a_caller_that_goes_away_stops_the_query_at_the_server(env: Env) -> None:
    async def scenario() -> None:
        task = asyncio.ensure_future(
            env.connector.execute_small(
                "SELECT pg_sleep(%s)::text AS slept", (30,), timeout=60, max_rows=1
            )
        )
        started = time.monotonic()
        while env.active() == 0:
            assert time.monotonic() - started < 10, "the query never reached the server"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    wait_until(lambda: env.active() == 0, 10)
    for _ in range(4):  # every pooled connection answers both paths after it
        handle = small(env, "SELECT %s::int AS one", (1,))
        assert handle is not None and read(handle).column("one").to_pylist() == [1]
        assert read(env.connector.execute("SELECT %s::int AS one", (1,))).num_rows == 1


def test_the_timeout_stops_the_query_at_the_server(env: Env) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        small(env, "SELECT pg_sleep(%s)::text AS slept", (30,), timeout=0.5)
    assert time.monotonic() - started < 10
    wait_until(lambda: env.active() == 0, 10)
    for _ in range(4):
        handle = small(env, "SELECT %s::int AS one", (1,))
        assert handle is not None and read(handle).column("one").to_pylist() == [1]


def test_a_stale_prepared_statement_falls_back_and_heals(env: Env) -> None:
    """On one connection: the statement is prepared by its second run; after the table's
    type changes, the next lookup is left to `execute` once (which runs it), and the
    one after that is a lookup again."""
    env.admin.execute(f"CREATE TABLE {env.schema}.s (id int PRIMARY KEY, v numeric(5,2))")
    env.admin.execute(f"INSERT INTO {env.schema}.s VALUES (1, 1.5)")
    single = _single_connection(env)
    sql = f"SELECT * FROM {env.schema}.s WHERE id = %s"

    def lookup() -> QueryHandle | None:
        return asyncio.run(single.execute_small(sql, (1,), timeout=30, max_rows=1))

    try:
        for _ in range(3):
            handle = lookup()
            assert handle is not None
            assert read(handle).column("v").to_pylist() == [Decimal("1.50")]
        env.admin.execute(f"ALTER TABLE {env.schema}.s ALTER v TYPE numeric(6,3)")
        assert lookup() is None  # the stale statement was seen: a worker runs this one
        table = read(single.execute(sql, (1,)))
        assert table.schema.field("v").type == pa.decimal128(6, 3)
        assert table.column("v").to_pylist() == [Decimal("1.500")]
        handle = lookup()
        assert handle is not None and handle.buffered
        assert read(handle).column("v").to_pylist() == [Decimal("1.500")]
    finally:
        single.close()


def _single_connection(env: Env) -> PostgresConnector:
    """A connector over the env's database with one pooled connection, open and idle."""
    config = env.connector.config
    single = PostgresConnector(
        ConnectorConfig({**config.settings, "pool_min": 1, "pool_max": 1}, password=config.password)
    )
    single._get_pool().wait(timeout=10)
    return single


def test_no_free_connection_means_no_waiting_on_the_loop(env: Env) -> None:
    held = [
        env.connector.execute("SELECT pg_sleep(%s)::text AS slept", (30,), timeout=60)
        for _ in range(2)
    ]  # pool_max is 2: both connections busy
    try:
        started = time.monotonic()
        assert small(env, "SELECT %s::int AS one", (1,)) is None
        assert time.monotonic() - started < 1.0
    finally:
        closers = [threading.Thread(target=h.close) for h in held]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(timeout=30)
    wait_until(lambda: env.active() == 0, 10)


@pytest.mark.parametrize("path", ["execute", "execute_small"])
@pytest.mark.parametrize(
    "failing",
    [
        "SELECT nope FROM {s}.k WHERE id = %s",  # refused before its rows
        "SELECT id / (id - %s) AS q FROM {s}.k WHERE id = 1",  # fails in its rows
    ],
    ids=["before-rows", "in-rows"],
)
def test_a_failed_first_query_does_not_poison_the_connection(
    env: Env, path: str, failing: str
) -> None:
    """A connection's first pipeline prepares the guard; when the query then fails
    (refused: a column dropped at the source; or while running), the guard exists on the
    server all the same, and later queries on that connection must not fail preparing
    it again (42P05 once did)."""
    env.admin.execute(f"CREATE TABLE {env.schema}.k (id int PRIMARY KEY)")
    env.admin.execute(f"INSERT INTO {env.schema}.k VALUES (1)")
    single = _single_connection(env)  # its one connection, with nothing prepared
    try:

        def run(sql: str) -> pa.Table:
            if path == "execute":
                return read(single.execute(sql, (1,)))
            handle = asyncio.run(single.execute_small(sql, (1,), timeout=30, max_rows=1))
            assert handle is not None
            return read(handle)

        for _ in range(3):  # the third run of a statement is a prepared one
            with pytest.raises(SourceQueryError) as failed:
                run(failing.replace("{s}", env.schema))
            assert failed.value.sqlstate in ("42703", "22012")
        for _ in range(3):
            assert run(f"SELECT id FROM {env.schema}.k WHERE id = %s").num_rows == 1
    finally:
        single.close()
