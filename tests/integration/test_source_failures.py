"""Why a source cannot be used, told apart from what the server said: authentication
failed, database missing, unreachable, pool exhausted. A login that cannot succeed fails
at once, not after the pool's timeout, and no message carries the server's text."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from connectors.base import Connector, ConnectorConfig
from connectors.mysql import MySQLConnector
from connectors.postgres import PostgresConnector
from fabric.errors import FailedPrecondition, SourceUnavailable
from tests.support.pg_instance import PgInstance, private_postgres
from tests.support.servers import mariadb_url

PASSWORD = "Right-Password-3c1d"
WRONG = "Wrong-Password-9e2a"
MISSING_DB = "NoSuchDatabase-51af"
POOL_TIMEOUT = 8.0
"""Long enough that a failure which waits it out is told from one that does not."""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgInstance]:
    with private_postgres(PASSWORD) as instance:
        yield instance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres(pg_port: int, user: str, password: str | None, **settings: Any) -> Connector:
    return PostgresConnector(
        ConnectorConfig(
            {
                "host": "127.0.0.1",
                "port": pg_port,
                "database": "postgres",
                "user": user,
                "pool_timeout": POOL_TIMEOUT,
                "connect_timeout": 5,
                **settings,
            },
            password,
        )
    )


def _first_row(connector: Connector) -> Any:
    with connector.execute("SELECT 1 AS one") as handle:
        return handle.reader().read_all().to_pylist()


def _timed_failure(action: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises((FailedPrecondition, SourceUnavailable)) as caught:
        action()
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize("path", ["test", "query"])
def test_a_wrong_password_is_an_authentication_failure_at_once(pg: PgInstance, path: str) -> None:
    connector = _postgres(pg.port, pg.user, WRONG)
    try:
        action = connector.test if path == "test" else lambda: _first_row(connector)
        error, seconds = _timed_failure(action)
    finally:
        connector.close()
    assert isinstance(error, FailedPrecondition), error
    assert "authentication failed" in str(error) and "SQLSTATE 28P01" in str(error)
    assert "check the connection's user and password" in str(error)
    assert WRONG not in str(error) and PASSWORD not in str(error)
    assert seconds < POOL_TIMEOUT / 2, f"waited {seconds:.1f}s: the pool's retries were waited out"


def test_every_waiting_query_fails_at_once_and_so_does_the_next(pg: PgInstance) -> None:
    connector = _postgres(pg.port, pg.user, WRONG, pool_max=2)
    errors: list[BaseException] = []

    def query() -> None:
        try:
            _first_row(connector)
        except BaseException as error:
            errors.append(error)

    try:
        started = time.monotonic()
        threads = [threading.Thread(target=query) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=POOL_TIMEOUT * 2)
        _, again = _timed_failure(lambda: _first_row(connector))
        seconds = time.monotonic() - started
    finally:
        connector.close()
    assert len(errors) == 4 and all(isinstance(e, FailedPrecondition) for e in errors), errors
    assert seconds < POOL_TIMEOUT / 2 and again < 1.0


@pytest.mark.parametrize("path", ["test", "query"])
def test_a_missing_database_is_told_apart(pg: PgInstance, path: str) -> None:
    connector = _postgres(pg.port, pg.user, PASSWORD, database=MISSING_DB)
    try:
        action = connector.test if path == "test" else lambda: _first_row(connector)
        error, seconds = _timed_failure(action)
    finally:
        connector.close()
    assert isinstance(error, FailedPrecondition), error
    assert "no database by the name in the connection's settings" in str(error)
    assert "SQLSTATE 3D000" in str(error) and MISSING_DB not in str(error)
    assert seconds < POOL_TIMEOUT / 2


def test_an_unknown_user_is_an_authentication_failure(pg: PgInstance) -> None:
    connector = _postgres(pg.port, "nobody_here", PASSWORD)
    try:
        error, _ = _timed_failure(connector.test)
    finally:
        connector.close()
    assert isinstance(error, FailedPrecondition) and "authentication failed" in str(error)
    assert "nobody_here" not in str(error)


def test_a_host_where_nothing_listens_is_unreachable() -> None:
    connector = _postgres(_free_port(), "postgres", None, pool_timeout=1.0)
    try:
        tested, _ = _timed_failure(connector.test)
        queried, _ = _timed_failure(lambda: _first_row(connector))
    finally:
        connector.close()
    for error in (tested, queried):
        assert isinstance(error, SourceUnavailable), error
        assert "cannot be reached" in str(error) and "host and port settings" in str(error)


def test_a_pool_whose_connections_stay_busy_says_so(pg: PgInstance) -> None:
    connector = _postgres(pg.port, pg.user, PASSWORD, pool_max=1, pool_timeout=1.0)
    try:
        held = connector.execute("SELECT pg_sleep(30)")
        try:
            error, _ = _timed_failure(lambda: _first_row(connector))
        finally:
            held.cancel()
            held.close()
    finally:
        connector.close()
    assert isinstance(error, SourceUnavailable)
    assert "every one of the 1 pooled connections" in str(error) and "pool_max" in str(error)


# -- MariaDB -------------------------------------------------------------------------------


def _mysql(**settings: Any) -> Connector:
    url = urlparse(mariadb_url())
    return MySQLConnector(
        ConnectorConfig(
            {
                "host": url.hostname or "127.0.0.1",
                "port": url.port or 3306,
                "user": url.username or "root",
                "database": (url.path or "/test").lstrip("/") or "test",
                "connect_timeout": 5,
                **{k: v for k, v in settings.items() if k != "password"},
            },
            settings.get("password", url.password),
        )
    )


def test_mariadb_wrong_password_and_missing_database_are_told_apart() -> None:
    wrong = _mysql(user="fabric_nobody", password=WRONG)
    missing = _mysql(database=MISSING_DB)
    try:
        login, _ = _timed_failure(wrong.test)
        database, _ = _timed_failure(missing.test)
        queried, seconds = _timed_failure(lambda: _first_row(wrong))
    finally:
        wrong.close()
        missing.close()
    assert isinstance(login, FailedPrecondition) and "authentication failed" in str(login)
    assert "ACCESS_DENIED_ERROR (MySQL error 1045" in str(login) and WRONG not in str(login)
    assert isinstance(database, FailedPrecondition) and "`database` setting" in str(database)
    assert "BAD_DB_ERROR (MySQL error 1049" in str(database) and MISSING_DB not in str(database)
    assert isinstance(queried, FailedPrecondition) and seconds < POOL_TIMEOUT / 2


def test_mariadb_where_nothing_listens_is_unreachable() -> None:
    connector = _mysql(port=_free_port())
    try:
        error, _ = _timed_failure(connector.test)
    finally:
        connector.close()
    assert isinstance(error, SourceUnavailable) and "cannot be reached" in str(error)
