"""Pooled connections the database dropped.

A connection the server ended while it sat idle in the pool (a restart, an operator's
terminate) is found dead before use and replaced: no query fails for it, on any path. A
connection whose end the client cannot see yet (a NAT that forgot it: the client learns
only when it sends) fails at the start of the query, before anything has reached the
caller, and the query runs once more on a fresh connection. A connection dropped while
a key lookup (`execute_small`) runs on it fails as the source being unavailable, like
the streaming paths, never as a cancel nobody asked for; it is discarded and the next
query gets a live one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from connectors.base import ConnectorConfig
from connectors.postgres import PostgresConnector
from fabric.api.status import status_for
from fabric.errors import SourceUnavailable
from tests.integration.test_postgres_connector import Env, read, wait_until
from tests.integration.test_postgres_small_queries import _single_connection
from tests.support.pg_instance import PgInstance, private_postgres
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

LOOKUP = "SELECT %s::int AS one"


@pytest.fixture
def env(postgres_url: str) -> Iterator[Env]:
    e = Env(postgres_url)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def single(env: Env) -> Iterator[PostgresConnector]:
    connector = _single_connection(env)
    try:
        yield connector
    finally:
        connector.close()


def _terminate(env: Env, *, state: str, running: str = "") -> int:
    """End the connector's server sessions in `state` (running a query that contains
    `running`) from the admin session, as a database restart or an operator would; how
    many were ended."""
    rows = env.admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND state = %s AND strpos(query, %s) > 0",
        [env.app, state, running],
    ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def _assert_unavailable(error: SourceUnavailable) -> None:
    assert status_for(error) == grpc.StatusCode.UNAVAILABLE
    assert "cancel" not in error.message


def _sessions(env: Env) -> int:
    row = env.admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [env.app]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _terminate_idle_and_wait(env: Env, expected: int) -> None:
    """End the connector's idle sessions and wait until the server has closed them (a
    terminate is a signal: the session ends a moment after the call returns)."""
    assert _terminate(env, state="idle") == expected
    wait_until(lambda: _sessions(env) == 0, 10)


def test_a_lookup_on_a_connection_dropped_while_idle_is_answered_on_a_fresh_one(
    env: Env, single: PostgresConnector, caplog: pytest.LogCaptureFixture
) -> None:
    _terminate_idle_and_wait(env, expected=1)
    with caplog.at_level(logging.WARNING):
        handle = asyncio.run(single.execute_small(LOOKUP, (1,), timeout=30, max_rows=1))
        if handle is None:
            # the dead one discarded, no other was free at once: the worker path's turn,
            # as the engine would take it
            handle = single.execute(LOOKUP, (1,), timeout=30)
    assert read(handle).column("one").to_pylist() == [1]
    # the dead connection was found by a look at its socket: no query was sent on it,
    # and no cancel request to a session that no longer exists
    assert not [r for r in caplog.records if "cancel" in r.getMessage()]


@pytest.mark.parametrize("params", [(), (7,)], ids=["copy", "pipeline"])
def test_queries_after_every_pooled_connection_was_dropped_all_succeed(
    env: Env, params: tuple[int, ...]
) -> None:
    sql = "SELECT %s::int AS one" if params else "SELECT 7 AS one"
    held = [env.connector.execute(sql, params, timeout=30) for _ in range(2)]
    for handle in held:  # two connections, both back in the pool and idle
        assert read(handle).column("one").to_pylist() == [7]
    _terminate_idle_and_wait(env, expected=2)
    for _ in range(4):
        assert read(env.connector.execute(sql, params, timeout=30)).column("one").to_pylist() == [7]


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PgInstance]:
    with private_postgres("Dropped-Connections-1") as instance:
        yield instance


def _connector(instance: PgInstance, port: int, pool_max: int) -> PostgresConnector:
    return PostgresConnector(
        ConnectorConfig(
            {
                "host": "127.0.0.1",
                "port": port,
                "database": "postgres",
                "user": instance.user,
                "pool_min": pool_max,
                "pool_max": pool_max,
                "pool_timeout": 10,
            },
            password=instance.password,
        )
    )


@pytest.mark.parametrize("params", [(), (5,)], ids=["copy", "pipeline"])
def test_queries_after_a_server_restart_all_succeed(
    private_pg: PgInstance, params: tuple[int, ...]
) -> None:
    sql = "SELECT %s::int AS n" if params else "SELECT 5 AS n"
    connector = _connector(private_pg, private_pg.port, pool_max=3)
    try:
        connector._get_pool().wait(timeout=10)  # three connections, open and idle
        private_pg.restart()
        for _ in range(6):
            table = read(connector.execute(sql, params, timeout=30))
            assert table.column("n").to_pylist() == [5]
        lookup = asyncio.run(connector.execute_small("SELECT %s::int AS n", (5,), max_rows=1))
        assert lookup is not None and read(lookup).column("n").to_pylist() == [5]
    finally:
        connector.close()


@pytest.mark.parametrize("params", [(), (9,)], ids=["copy", "pipeline"])
def test_a_connection_dropped_unseen_is_retried_before_the_first_byte(
    private_pg: PgInstance, params: tuple[int, ...]
) -> None:
    sql = "SELECT %s::int AS n" if params else "SELECT 9 AS n"
    with TcpProxy(private_pg.port) as proxy:
        connector = _connector(private_pg, proxy.port, pool_max=1)
        try:
            connector._get_pool().wait(timeout=10)
            assert proxy.drop_silently() == 1
            # The pooled connection looks alive (nothing to read on it) until the query
            # is sent; it is then reset, and the query runs on a new connection.
            assert read(connector.execute(sql, params, timeout=30)).column("n").to_pylist() == [9]
            assert proxy.accepted >= 2
        finally:
            connector.close()


def test_a_connection_dropped_after_the_first_rows_is_never_retried(
    private_pg: PgInstance,
) -> None:
    with psycopg.connect(private_pg.url(), autocommit=True) as admin:
        admin.execute(
            "CREATE TABLE IF NOT EXISTS numbers AS "
            "SELECT n, repeat('x', 200) AS pad FROM generate_series(1, 300000) n"
        )
    with TcpProxy(private_pg.port) as proxy:
        connector = _connector(private_pg, proxy.port, pool_max=1)
        try:
            handle = connector.execute(
                "SELECT n, pad FROM numbers", (), timeout=30, batch_rows=1000
            )
            first = handle.reader.read_next_batch()
            assert first.num_rows > 0
            proxy.cut()
            with pytest.raises(SourceUnavailable):
                while True:
                    handle.reader.read_next_batch()
            handle.close()
        finally:
            connector.close()


def test_a_lookup_whose_connection_is_dropped_mid_query_is_unavailable(
    env: Env, single: PostgresConnector
) -> None:
    async def scenario() -> None:
        lookup = asyncio.ensure_future(
            single.execute_small(
                "SELECT pg_sleep(%s)::text AS slept", (30,), timeout=60, max_rows=1
            )
        )
        started = time.monotonic()
        while _terminate(env, state="active", running="pg_sleep") == 0:
            assert not lookup.done(), "the lookup never reached the server"
            assert time.monotonic() - started < 10, "the lookup never reached the server"
            await asyncio.sleep(0.01)
        with pytest.raises(SourceUnavailable) as failed:
            await lookup
        _assert_unavailable(failed.value)

    asyncio.run(scenario())
    assert read(single.execute(LOOKUP, (3,), timeout=30)).column("one").to_pylist() == [3]
