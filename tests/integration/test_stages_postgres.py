"""Two stages of one connection on two PostgreSQL databases whose tables differ: what is
physical stays per stage, a refresh that finds nothing changes nothing, a column dropped
at the source is named (from the gateway's own metadata) before and after a refresh,
and revocation reaches a statement opened before the change.

A private PostgreSQL server (started and stopped here) holds two databases, `dev` and
`prod`, both with `sales.orders`; it logs every statement (`log_statement=all`, each
line prefixed with its database), so a test can tell what reached each database. Every
connector the gateway builds is wrapped in the recording connector too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors import Connector
from fabric.errors import SchemaMismatch, SelectionChanged
from fabric.model import Connection, SettingValue
from fabric.query.sources import default_connector_factory
from fabric.v1 import platform_pb2 as pb
from tests.e2e.conftest import RecordingConnector
from tests.e2e.test_platform_api import Platform, stage_config, start_platform, stop_platform
from tests.support.pg_instance import PgInstance, private_postgres

pytestmark = pytest.mark.postgres

PASSWORD = "Two-Stages-Canary-31c9"
DEV, PROD = "development", "production"
ROWS = 50


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[PgInstance, Path]]:
    log = tmp_path / "postgres.log"
    with private_postgres(
        PASSWORD, options=("log_statement=all", "log_line_prefix=%d|"), log=log
    ) as pg:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dev")
            conn.execute("CREATE DATABASE prod")
        for database in ("dev", "prod"):
            with psycopg.connect(url(pg, database), autocommit=True) as conn:
                conn.execute(f"""
                    CREATE SCHEMA sales;
                    CREATE TABLE sales.orders (id int PRIMARY KEY, amount int, note text,
                                               region text);
                    INSERT INTO sales.orders SELECT i, i * 10, '{database}-note-' || i,
                        'r' || (i % 3) FROM generate_series(1, {ROWS}) i;
                """)
        yield pg, log


def url(pg: PgInstance, database: str) -> str:
    return pg.url().rsplit("/", 1)[0] + f"/{database}"


def ddl(pg: PgInstance, database: str, statement: str) -> None:
    with psycopg.connect(url(pg, database), autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def platform(
    tmp_path: Path, server: tuple[PgInstance, Path]
) -> Iterator[tuple[Platform, list[tuple[str, tuple[Any, ...]]]]]:
    pg, _ = server
    executed: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Event()
    gate.set()

    def recording(
        connection: Connection, settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        inner = default_connector_factory(connection, settings, password)
        return RecordingConnector(inner, executed, gate)

    p = start_platform(tmp_path, recording)
    common: dict[str, str | int] = {"host": "127.0.0.1", "port": pg.port, "user": pg.user}
    p.call(
        p.connections.CreateConnection,
        pb.CreateConnectionRequest(
            name="two",
            kind="postgres",
            verify=True,
            stages=[
                stage_config(DEV, PASSWORD, database="dev", **common),
                stage_config(PROD, PASSWORD, database="prod", **common),
            ],
        ),
    )
    p.call(
        p.catalog.Select,
        pb.SelectRequest(connection="two", tables=[pb.TableSelection(table="sales.orders")]),
    )
    try:
        yield p, executed
    finally:
        stop_platform(p)


def refresh(p: Platform, stage: str) -> pb.RefreshResponse:
    response: pb.RefreshResponse = p.call(
        p.catalog.Refresh, pb.RefreshRequest(connection="two"), stage=stage
    )
    return response


def drift(response: pb.RefreshResponse) -> set[tuple[str, str]]:
    return {(d.kind, d.column) for d in response.drift}


def statements(log: Path, database: str, since: int = 0) -> list[str]:
    """The statements `database` ran (from the server's log), after byte `since`."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if line.startswith(f"{database}|")]


def test_each_stage_keeps_its_own_physical_table(
    platform: tuple[Platform, list[tuple[str, tuple[Any, ...]]]],
    server: tuple[PgInstance, Path],
) -> None:
    p, executed = platform
    pg, log = server
    # Both stages have the same table: production's first refresh records it, and a
    # second finds nothing and changes nothing.
    first = refresh(p, PROD)
    assert list(first.drift) == []
    again = refresh(p, PROD)
    assert list(again.drift) == []
    assert again.catalog_version == again.previous_catalog_version == first.catalog_version

    # Development drops `note`; production turns `amount` into numeric.
    ddl(pg, "dev", "ALTER TABLE sales.orders DROP COLUMN note")
    ddl(pg, "prod", "ALTER TABLE sales.orders ALTER COLUMN amount TYPE numeric(12,2)")

    # Before any refresh, the source's undefined column is named from the gateway's own
    # compiled statement, with what to do.
    sql = "SELECT id, note FROM orders ORDER BY id"
    with p.client(DEV) as dev, pytest.raises(SchemaMismatch) as stale:
        dev.query("two", sql)
    assert stale.value.sqlstate == "42703"
    message = stale.value.message
    assert "column 'orders.note' no longer exists at the source" in message
    assert "refresh" in message and "'development'" in message

    # Refreshing development rewrites development's record only: `note` stays selected
    # (production has it), and development is told, before reaching its database.
    dev_refresh = refresh(p, DEV)
    assert drift(dev_refresh) == {("column_dropped", "note")}
    assert "stays selected" in dev_refresh.drift[0].detail
    assert [c.name for c in dev_refresh.entities[0].columns] == ["id", "amount", "note", "region"]
    executions, logged = len(executed), log.stat().st_size
    with p.client(DEV) as dev, pytest.raises(SchemaMismatch) as drifted:
        dev.query("two", sql)
    assert "column 'orders.note' is selected" in drifted.value.message
    assert "stage 'development'" in drifted.value.message
    assert len(executed) == executions, "nothing reached the source"
    assert not [s for s in statements(log, "dev", logged) if "note" in s]
    with p.client(PROD) as prod:
        notes = prod.query("two", sql).column("note").to_pylist()
    assert notes == [f"prod-note-{i}" for i in range(1, ROWS + 1)]

    # Refreshing production records production's new type for production alone.
    prod_refresh = refresh(p, PROD)
    assert drift(prod_refresh) == {("type_changed", "amount")}
    [changed] = prod_refresh.drift
    assert (changed.old_type, changed.new_type) == ("integer", "numeric(12,2)")
    amounts = "SELECT amount FROM orders WHERE id = 1"
    with p.client(PROD) as prod, p.client(DEV) as dev:
        assert prod.query("two", amounts).column("amount").to_pylist() == [Decimal("10.00")]
        assert dev.query("two", amounts).column("amount").to_pylist() == [10]

    # Development again: nothing changed there, so nothing changes, and production's
    # type is not flipped back.
    quiet = refresh(p, DEV)
    assert list(quiet.drift) == []
    assert quiet.catalog_version == quiet.previous_catalog_version == prod_refresh.catalog_version
    with p.client(PROD) as prod:
        assert prod.query("two", amounts).column("amount").to_pylist() == [Decimal("10.00")]

    # Dropped in production too: no stage has `note`, so it leaves the selection.
    ddl(pg, "prod", "ALTER TABLE sales.orders DROP COLUMN note")
    last = refresh(p, PROD)
    assert drift(last) == {("column_dropped", "note")}
    assert [c.name for c in last.entities[0].columns] == ["id", "amount", "region"]


def test_a_table_gone_at_the_source_is_named_before_the_refresh(
    platform: tuple[Platform, list[tuple[str, tuple[Any, ...]]]],
    server: tuple[PgInstance, Path],
) -> None:
    p, _ = platform
    pg, _ = server
    ddl(pg, "dev", "ALTER TABLE sales.orders RENAME TO orders_old")
    with p.client(DEV) as dev, pytest.raises(SchemaMismatch) as gone:
        dev.query("two", "SELECT count(*) AS n FROM orders")
    assert gone.value.sqlstate == "42P01"
    assert "table sales.orders of entity 'orders' no longer exists" in gone.value.message
    refreshed = refresh(p, DEV)
    assert drift(refreshed) == {("table_gone", "")}
    with p.client(DEV) as dev, pytest.raises(SchemaMismatch, match="did not exist in stage"):
        dev.query("two", "SELECT count(*) AS n FROM orders")
    with p.client(PROD) as prod:
        assert prod.query("two", "SELECT count(*) AS n FROM orders").to_pylist() == [{"n": ROWS}]


def test_a_refresh_that_drops_a_column_stops_a_statement_paging_over_it(
    platform: tuple[Platform, list[tuple[str, tuple[Any, ...]]]],
    server: tuple[PgInstance, Path],
) -> None:
    """A statement paging over a cached result holds no lock at the source, so the column
    can be dropped under it; the refresh that finds the column gone in every stage stops
    the statement at its next page."""
    p, executed = platform
    pg, _ = server
    sql = "SELECT id, note FROM orders ORDER BY id"
    with p.client(DEV) as dev:
        assert dev.execute("two", sql, cache_ttl=600).table.num_rows == ROWS
        statement = dev.open_statement("two", sql, cache_ttl=600, page_rows=10)
        assert statement.fetch() is not None
        assert statement.summary is None  # from the cache, not yet consumed
        executions = len(executed)
        for database in ("dev", "prod"):
            ddl(pg, database, "ALTER TABLE sales.orders DROP COLUMN note")
        refresh(p, PROD)
        assert refresh(p, DEV).entities[0].columns[-1].name == "region"
        with pytest.raises(SelectionChanged, match=r"column 'orders\.note' is no longer selected"):
            statement.fetch()
        assert len(executed) == executions
    assert p.engine.snapshot()["purge_statement_revoked"] == 1
