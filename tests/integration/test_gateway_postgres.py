"""The gateway over a real PostgreSQL: exact rows and types, cancellation, deadlines."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import DeadlineExceeded
from fabric.query.engine import QueryEngine
from tests.support.executors import counting_source_calls

pytestmark = pytest.mark.postgres


def _settings_from_url(url: str) -> dict[str, Any]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    settings: dict[str, Any] = {
        "host": info.get("host", "127.0.0.1"),
        "port": int(info.get("port") or 5432),
        "database": info["dbname"],
        "user": info.get("user", "postgres"),
    }
    return settings


@pytest.fixture(scope="module")
def pg_schema(postgres_url: str) -> Iterator[str]:
    schema = f"fabric_gw_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"""
            CREATE TABLE {schema}.facts (
                id bigint PRIMARY KEY, small smallint, num numeric(18,4), label text,
                day date, at_local timestamp, at_zone timestamptz, flag boolean,
                ratio double precision)
        """)
        conn.execute(f"""
            INSERT INTO {schema}.facts
            SELECT i, (i % 30000)::smallint, (i * 1.0001)::numeric(18,4),
                   CASE WHEN i % 7 = 0 THEN NULL WHEN i % 5 = 0 THEN ''
                        ELSE 'ünï ' || i || ' 🚀' END,
                   DATE '2024-02-29' + (i % 400),
                   TIMESTAMP '2024-01-01 00:00:00.123456' + i * INTERVAL '1 minute',
                   TIMESTAMPTZ '2024-01-01 00:00:00+05' + i * INTERVAL '1 second',
                   CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
                   i / 3.0
            FROM generate_series(1, 5000) AS i
        """)
        conn.execute(f"CREATE TABLE {schema}.hidden (id int PRIMARY KEY, secret text)")
    try:
        yield schema
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, pg_schema: str
) -> Iterator[tuple[BackgroundGateway, QueryEngine]]:
    home: Path = tmp_path_factory.mktemp("pg_gateway")
    store = SqliteMetadataStore(home / "metadata.sqlite")
    manager = catalog_manager(store)
    manager.create_connection("default", "pg", "postgres", {"*": _settings_from_url(postgres_url)})
    manager.select("default", "pg", "development", f"{pg_schema}.facts")
    engine = QueryEngine(store, Settings(home=home, metrics_port=0))
    background = BackgroundGateway(
        assemble_gateway(engine, context_provider=local_admin_context)
    ).start()
    try:
        yield background, engine
    finally:
        background.stop()
        store.close()


def _direct(url: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_rows_and_types_match_psycopg(
    gateway: tuple[BackgroundGateway, QueryEngine], postgres_url: str, pg_schema: str
) -> None:
    background, _ = gateway
    columns = "id, small, num, label, day, at_local, at_zone, flag, ratio"
    with FabricClient(background.address, timeout=60) as client:
        unbound = client.query("pg", f"SELECT {columns} FROM facts ORDER BY id")
        bound = client.query(
            "pg",
            f"SELECT {columns} FROM facts WHERE id > :after "
            "AND label IS DISTINCT FROM :label ORDER BY id",
            {"after": 10, "label": "nothing"},
        )
    expected = _direct(postgres_url, f"SELECT {columns} FROM {pg_schema}.facts ORDER BY id")
    assert unbound.to_pylist() == expected
    assert bound.to_pylist() == [r for r in expected if r["id"] > 10]
    row = expected[0]
    assert isinstance(row["num"], Decimal) and row["at_zone"].tzinfo is not None
    assert unbound.schema.field("at_zone").type.tz is not None
    assert unbound.schema.field("at_local").type.tz is None
    assert str(unbound.schema.field("num").type) == "decimal128(18, 4)"
    assert any(r["label"] == "" for r in expected) and any(r["label"] is None for r in expected)


def _activity(url: str, marker: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            [f"%{marker}%"],
        ).fetchone()
        return int(row[0]) if row else 0


def _wait_until(predicate: Any, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _slow_sql(marker: str) -> str:
    # A cross join of the table with itself runs for minutes; the marker finds it.
    return (
        f"SELECT COUNT(*) AS n FROM facts a CROSS JOIN facts b CROSS JOIN facts c "
        f"WHERE a.label <> '{marker}'"
    )


def test_cancelled_call_cancels_the_query_in_postgres(
    gateway: tuple[BackgroundGateway, QueryEngine], postgres_url: str
) -> None:
    background, _ = gateway
    marker = f"cancel_{secrets.token_hex(4)}"
    from fabric.v1 import query_pb2 as pb
    from fabric.v1 import query_pb2_grpc as pb_grpc

    with grpc.insecure_channel(background.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        call = stub.Execute(pb.ExecuteRequest(connection="pg", sql=_slow_sql(marker)))
        consumer = threading.Thread(target=lambda: list(_swallow(call)))
        consumer.start()
        assert _wait_until(lambda: _activity(postgres_url, marker) == 1, within=10)
        call.cancel()
        consumer.join(timeout=10)
        cancelled_at = time.monotonic()
        assert _wait_until(lambda: _activity(postgres_url, marker) == 0, within=1.0)
        assert time.monotonic() - cancelled_at <= 1.0
    with FabricClient(background.address, timeout=30) as client:
        assert client.query("pg", "SELECT COUNT(*) AS n FROM facts").column("n")[0].as_py() == 5000


def _swallow(call: Any) -> Iterator[Any]:
    try:
        yield from call
    except grpc.RpcError:
        return


def test_deadline_cancels_the_query_in_postgres(
    gateway: tuple[BackgroundGateway, QueryEngine], postgres_url: str
) -> None:
    background, _ = gateway
    marker = f"deadline_{secrets.token_hex(4)}"
    with FabricClient(background.address, timeout=1.5) as client, pytest.raises(DeadlineExceeded):
        client.query("pg", _slow_sql(marker))
    assert _wait_until(lambda: _activity(postgres_url, marker) == 0, within=1.0)
    with FabricClient(background.address, timeout=30) as client:
        for _ in range(3):  # more than one pooled connection is healthy
            assert (
                client.query("pg", "SELECT COUNT(*) AS n FROM facts WHERE id < :k", {"k": 11})
                .column("n")[0]
                .as_py()
                == 10
            )


def test_timestamps_and_dates_as_parameters(
    gateway: tuple[BackgroundGateway, QueryEngine], postgres_url: str, pg_schema: str
) -> None:
    background, _ = gateway
    since = dt.datetime(2024, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    with FabricClient(background.address, timeout=30) as client:
        got = client.query(
            "pg",
            "SELECT COUNT(*) AS n FROM facts WHERE at_zone >= :since AND day <= :day",
            {"since": since, "day": dt.date(2024, 6, 1)},
        )
    expected = _direct(
        postgres_url,
        f"SELECT COUNT(*) AS n FROM {pg_schema}.facts WHERE at_zone >= %s AND day <= %s",
        [since, dt.date(2024, 6, 1)],
    )
    assert got.to_pylist() == expected


def test_key_lookups_run_on_the_event_loop(
    gateway: tuple[BackgroundGateway, QueryEngine], postgres_url: str, pg_schema: str
) -> None:
    """A lookup by primary key (the compiler proves it returns one row at most) runs
    without a worker thread and returns what psycopg returns; anything else, and the
    first use of a connection, still goes to a worker thread."""
    background, engine = gateway
    columns = "id, small, num, label, day, at_local, at_zone, flag, ratio"
    with FabricClient(background.address, timeout=60) as client:
        client.query("pg", "SELECT id FROM facts WHERE id = :id", {"id": 1})
        with counting_source_calls(engine) as counting:
            for key in (7, 5000, 35, 999_999):
                table = client.query(
                    "pg", f"SELECT {columns} FROM facts WHERE id = :id", {"id": key}
                )
                expected = _direct(
                    postgres_url, f"SELECT {columns} FROM {pg_schema}.facts WHERE id = %s", [key]
                )
                assert table.to_pylist() == expected
                assert table.num_rows == (0 if key == 999_999 else 1)
            assert counting.calls == 0
            ranged = client.query("pg", "SELECT id FROM facts WHERE id < :n ORDER BY id", {"n": 4})
            assert ranged.column("id").to_pylist() == [1, 2, 3]
            assert counting.calls >= 1
