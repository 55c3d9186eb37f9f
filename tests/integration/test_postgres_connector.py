"""The PostgreSQL connector against a real server: results equal psycopg's own."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import pyarrow as pa
import pytest

from connectors.base import ConnectorConfig, QueryHandle
from connectors.postgres import PostgresConnector
from fabric.errors import Cancelled, DeadlineExceeded, SourceQueryError

pytestmark = pytest.mark.postgres


class Env:
    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:12]
        self.schema = f"fabric_it_{tag}"
        self.app = f"fabric-it-{tag}"
        self.admin = psycopg.connect(url, autocommit=True)
        self.admin.execute(f"CREATE SCHEMA {self.schema}")
        u = urlparse(url)
        self.connector = PostgresConnector(
            ConnectorConfig(
                {
                    "host": u.hostname or "127.0.0.1",
                    "port": u.port or 5432,
                    "database": (u.path or "/test").lstrip("/") or "test",
                    "user": unquote(u.username or "postgres"),
                    "application_name": self.app,
                    "pool_min": 1,
                    "pool_max": 2,
                    "pool_timeout": 5,
                },
                password=unquote(u.password) if u.password else None,
            )
        )

    def active(self) -> int:
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active'",
            [self.app],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self.connector.close()
        self.admin.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.admin.close()


@pytest.fixture
def env(postgres_url: str) -> Iterator[Env]:
    e = Env(postgres_url)
    try:
        yield e
    finally:
        e.close()


def wait_until(check: Any, deadline_s: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"condition not met within {deadline_s}s")
        time.sleep(0.005)
    return time.monotonic() - start


def read(handle: QueryHandle) -> pa.Table:
    with handle:
        return handle.reader.read_all()


ROWS = [
    (
        1,
        32767,
        2**62,
        Decimal("12345.67"),
        Decimal("-0.001"),
        "héllo 😀",
        "",
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        True,
        "x",
    ),
    (2, None, None, None, None, None, None, None, None, None, None, None),
    (
        3,
        -32768,
        -(2**63),
        Decimal("-99999999.99"),
        Decimal("3.14159265358979323846"),
        'line\nbreak, "quoted"',
        "NULL",
        dt.date(1970, 1, 1),
        dt.datetime(1999, 12, 31, 23, 59, 59),
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        False,
        "yz",
    ),
]


@pytest.fixture
def typed(env: Env) -> Env:
    env.admin.execute(
        f"CREATE TABLE {env.schema}.t (id int4 PRIMARY KEY, s int2, b int8, m numeric(10,2), "
        "u numeric, txt text, e varchar(10), d date, ts timestamp, tz timestamptz, ok bool, "
        "c char(3))"
    )
    with env.admin.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {env.schema}.t VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", ROWS
        )
    return env


@pytest.mark.parametrize("with_params", [False, True], ids=["copy", "cursor"])
def test_rows_and_types_equal_psycopg(typed: Env, with_params: bool) -> None:
    sql = (
        f"SELECT id, s, b, m, u, txt, e, d, ts, tz, ok, c, m * 3 AS m3, sum(m) OVER () AS total, "
        f"avg(s) OVER () AS mean FROM {typed.schema}.t"
    )
    params: list[Any] = []
    if with_params:
        sql += " WHERE id >= %s"
        params = [0]
    sql += " ORDER BY id"
    with psycopg.connect(typed.admin.info.dsn, autocommit=True) as direct:
        cur = direct.cursor(row_factory=psycopg.rows.dict_row)
        expected = cur.execute(sql, params).fetchall()
    table = read(typed.connector.execute(sql, params))
    assert table.to_pylist() == expected
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    assert types == {
        "id": pa.int32(),
        "s": pa.int16(),
        "b": pa.int64(),
        "m": pa.decimal128(10, 2),
        "u": pa.decimal256(76, 38),
        "txt": pa.string(),
        "e": pa.string(),
        "d": pa.date32(),
        "ts": pa.timestamp("us"),
        "tz": pa.timestamp("us", tz="UTC"),
        "ok": pa.bool_(),
        "c": pa.string(),
        "m3": pa.decimal256(76, 38),
        "total": pa.decimal256(76, 38),
        "mean": pa.decimal256(76, 38),
    }
    assert table.column("c").to_pylist()[0] == "x  "  # char(n) keeps its padding


def test_introspect_matches_execute_types(typed: Env) -> None:
    [info] = typed.connector.introspect([typed.schema])
    table = read(typed.connector.execute(f"SELECT * FROM {typed.schema}.t"))
    assert [c.arrow_type for c in info.columns] == table.schema.types
    assert info.primary_key == ("id",)
    assert [c.source_type for c in info.columns][3:5] == ["numeric(10,2)", "numeric"]
    assert info.columns[0].nullable is False and info.columns[1].nullable is True


def test_unrepresentable_numeric_is_an_error_not_a_rounding(env: Env) -> None:
    for sql in (
        "SELECT 'NaN'::numeric AS v",
        "SELECT 1e-40::numeric AS v",
        "SELECT (10::numeric ^ 40) AS v",
    ):
        with pytest.raises(SourceQueryError) as info:
            read(env.connector.execute(sql))
        assert "column #1" in str(info.value)
        assert "NaN" not in str(info.value)
    exact = read(env.connector.execute("SELECT 1::numeric / 3 AS v, 1e-38::numeric AS w"))
    assert exact.to_pylist() == [{"v": Decimal("0.33333333333333333333"), "w": Decimal("1e-38")}]


def test_intervals_bytea_and_percent(env: Env) -> None:
    sql = (
        "SELECT interval '1 year 2 mons -3 days 04:05:06.5' AS i, '\\x00ff'::bytea AS b, "
        "'100%%' AS p, 'a' LIKE 'a%%' AS l"
    )
    for params in ([], [1]):
        text = sql + (" WHERE 1 = %s" if params else "")
        row = read(env.connector.execute(text, params)).to_pylist()[0]
        nanos = (4 * 3600 + 5 * 60 + 6.5) * 1_000_000_000
        assert row == {
            "i": pa.MonthDayNano([14, -3, int(nanos)]),
            "b": b"\x00\xff",
            "p": "100%",
            "l": True,
        }


def test_read_only_is_enforced(typed: Env) -> None:
    with pytest.raises(SourceQueryError) as info:
        read(typed.connector.execute(f"INSERT INTO {typed.schema}.t (id) VALUES (99)"))
    assert info.value.sqlstate == "25006"
    with pytest.raises(SourceQueryError) as info:
        read(typed.connector.execute(f"INSERT INTO {typed.schema}.t (id) VALUES (98) RETURNING id"))
    assert info.value.sqlstate == "25006"
    count = typed.admin.execute(f"SELECT count(*) FROM {typed.schema}.t").fetchone()
    assert count == (3,)


@pytest.mark.parametrize("with_params", [False, True], ids=["copy", "cursor"])
@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_stop_the_server_query(env: Env, with_params: bool, how: str) -> None:
    sql, params = (
        ("SELECT pg_sleep(%s) AS s", [30]) if with_params else ("SELECT pg_sleep(30) AS s", [])
    )
    handle = env.connector.execute(sql, params, timeout=1.0 if how == "timeout" else None)
    outcome: dict[str, BaseException | None] = {}

    def consume() -> None:
        try:
            handle.reader.read_all()
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    wait_until(lambda: env.active() > 0, 5)
    if how == "cancel":
        handle.cancel()
        assert wait_until(lambda: env.active() == 0, 1.0) <= 1.0
    else:
        assert wait_until(lambda: env.active() == 0, 3.0) <= 3.0
    thread.join(5)
    assert not thread.is_alive()
    expected = Cancelled if how == "cancel" else DeadlineExceeded
    assert isinstance(outcome["error"], expected)
    handle.close()
    # the pool is whole: more queries than it has connections, one after another
    for i in range(5):
        assert read(env.connector.execute("SELECT %s::int AS i", [i])).to_pylist() == [{"i": i}]
        assert read(env.connector.execute("SELECT 1 AS one")).to_pylist() == [{"one": 1}]
    # and the sessions are back to idle, not stuck in a transaction
    wait_until(lambda: env.active() == 0, 1.0)


@pytest.mark.parametrize("with_params", [False, True], ids=["copy", "cursor"])
def test_200k_rows_stream_in_several_batches(env: Env, with_params: bool) -> None:
    sql = "SELECT i, md5(i::text) AS h FROM generate_series(1, %s) AS g(i)"
    params: list[Any] = [200_000] if with_params else []
    if not with_params:
        sql = sql.replace("%s", "200000")
    with env.connector.execute(sql, params) as handle:
        sizes = []
        total = 0
        for batch in handle.reader:
            sizes.append(batch.num_rows)
            total += pa.compute.sum(batch.column("i")).as_py()
    assert sum(sizes) == 200_000 and total == 200_000 * 200_001 // 2
    assert len(sizes) >= 4 and max(sizes) <= 65_536


def test_schema_change_is_picked_up(env: Env) -> None:
    env.admin.execute(f"CREATE TABLE {env.schema}.s (v int4)")
    env.admin.execute(f"INSERT INTO {env.schema}.s VALUES (1)")
    sql = f"SELECT v FROM {env.schema}.s"
    assert read(env.connector.execute(sql)).schema.types == [pa.int32()]
    env.admin.execute(f"ALTER TABLE {env.schema}.s ALTER v TYPE numeric(6,3)")
    env.admin.execute(f"UPDATE {env.schema}.s SET v = 1.5")
    # a cached description fails once (never a wrong value), then is refreshed
    try:
        table = read(env.connector.execute(sql))
    except SourceQueryError:
        table = read(env.connector.execute(sql))
    assert table.to_pylist() == [{"v": Decimal("1.500")}]
