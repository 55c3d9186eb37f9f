"""A key lookup (`execute_small`) on a connection the database dropped fails as the
source being unavailable, like the streaming paths, never as a cancel nobody asked for;
the dead connection is discarded and the next query gets a live one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import grpc
import pytest

from connectors.postgres import PostgresConnector
from fabric.api.status import status_for
from fabric.errors import SourceUnavailable
from tests.integration.test_postgres_connector import Env, read
from tests.integration.test_postgres_small_queries import _single_connection

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


def test_a_lookup_on_a_connection_dropped_while_idle_is_unavailable(
    env: Env, single: PostgresConnector, caplog: pytest.LogCaptureFixture
) -> None:
    assert _terminate(env, state="idle") == 1
    with caplog.at_level(logging.WARNING), pytest.raises(SourceUnavailable) as failed:
        asyncio.run(single.execute_small(LOOKUP, (1,), timeout=30, max_rows=1))
    _assert_unavailable(failed.value)
    # no cancel request was sent to a session that no longer exists
    assert not [r for r in caplog.records if "cancel" in r.getMessage()]
    # the dead connection was discarded: the pool hands out a live one next
    assert read(single.execute(LOOKUP, (2,), timeout=30)).column("one").to_pylist() == [2]


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
