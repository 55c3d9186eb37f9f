"""The MySQL connector against the real MariaDB: MySQL-specific types, zero dates,
discovery, pool bounds, errors that never echo values."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pytest

from connectors import connector_class
from connectors.base import ConnectorConfig, QueryHandle
from connectors.mysql import MySQLConnector, mysql_column_arrow_type
from fabric.errors import InvalidArgument, SourceQueryError
from tests.support.chaos import wait_for
from tests.support.servers import mariadb_url


class Env:
    def __init__(self, url: str) -> None:
        import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

        u = urlparse(url)
        self.db = f"fabric_it_{uuid.uuid4().hex[:12]}"
        self.base: dict[str, Any] = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 3306,
            "user": unquote(u.username or "root"),
            "database": self.db,
            "pool_max": 2,
            "pool_timeout": 3,
        }
        self.password = unquote(u.password) if u.password else None
        self.admin = pymysql.connect(
            host=self.base["host"],
            port=self.base["port"],
            user=self.base["user"],
            password=self.password or "",
            charset="utf8mb4",
            autocommit=True,
            init_command="SET time_zone = '+00:00'",
        )
        self.run(f"CREATE DATABASE {self.db} CHARACTER SET utf8mb4")
        self.opened: list[MySQLConnector] = []

    def run(self, *statements: str) -> None:
        with self.admin.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def connector(self, **extra: Any) -> MySQLConnector:
        c = MySQLConnector(ConnectorConfig({**self.base, **extra}, password=self.password))
        self.opened.append(c)
        return c

    def close(self) -> None:
        for c in self.opened:
            c.close()
        self.run(f"DROP DATABASE IF EXISTS {self.db}")
        self.admin.close()


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env(mariadb_url())
    try:
        yield e
    finally:
        e.close()


def read(handle: QueryHandle) -> pa.Table:
    with handle:
        return handle.reader.read_all()


def test_registered() -> None:
    assert connector_class("mysql") is MySQLConnector


def test_wide_decimals_are_decimal128_when_their_values_fit(env: Env) -> None:
    env.run(
        f"CREATE TABLE {env.db}.w (id INT PRIMARY KEY, d DECIMAL(65,30))",
        f"INSERT INTO {env.db}.w VALUES (1, 12.5), (2, NULL), (3, -0.000001)",
    )
    c = env.connector()
    table = read(c.execute(f"SELECT d, SUM(d) OVER () AS total FROM {env.db}.w ORDER BY id"))
    assert table.schema.types == [pa.decimal128(38, 30), pa.decimal128(38, 30)]
    assert table.column("d").to_pylist() == [Decimal("12.5"), None, Decimal("-0.000001")]
    # a later batch whose value needs decimal256: an error naming the column, not a rounding
    env.run(f"INSERT INTO {env.db}.w VALUES (4, 123456789012345678901234567890.5)")
    handle = c.execute(f"SELECT d FROM {env.db}.w ORDER BY id", batch_rows=2)
    try:
        reader = handle.reader
        assert reader.schema.types == [pa.decimal128(38, 30)]
        assert reader.read_next_batch().num_rows == 2
        with pytest.raises(SourceQueryError) as info:
            reader.read_all()
        assert "column #1" in str(info.value) and "1234567" not in str(info.value)
    finally:
        handle.close()


def test_mysql_types(env: Env) -> None:
    env.run(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, u8 TINYINT UNSIGNED, "
        "u64 BIGINT UNSIGNED, i8 TINYINT, m MEDIUMINT UNSIGNED, d DECIMAL(65,30), "
        "tm TIME(6), j JSON, e ENUM('small','big'), s SET('a','b'), b BIT(5), "
        "bl BLOB, vb VARBINARY(8), y YEAR, dt6 DATETIME(6), ts TIMESTAMP(6) NULL, "
        "emoji VARCHAR(20))",
        f"INSERT INTO {env.db}.t VALUES (1, 255, 18446744073709551615, -128, 16777215, "
        "'12345678901234567890123456789012345.123456789012345678901234567890', "
        "'-838:59:59.000000', '{\"k\": [1, \"é\"]}', 'big', 'a,b', b'10101', "
        "x'00ff', x'0102', 2024, '2024-01-02 03:04:05.678901', "
        "'2024-01-02 03:04:05.678901', '😀 漢字')",
        f"INSERT INTO {env.db}.t (id) VALUES (2)",
    )
    c = env.connector()
    table = read(c.execute(f"SELECT * FROM {env.db}.t ORDER BY id"))
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    assert types["u8"] == pa.uint8() and types["u64"] == pa.uint64()
    assert types["i8"] == pa.int8() and types["m"] == pa.uint32()
    assert types["d"] == pa.decimal256(65, 30)
    assert types["tm"] == pa.duration("us")
    assert types["j"] == pa.string() and types["e"] == pa.string() and types["s"] == pa.string()
    assert types["b"] == pa.uint64() and types["bl"] == pa.binary()
    assert types["y"] == pa.int16()
    assert types["dt6"] == pa.timestamp("us")
    assert types["ts"] == pa.timestamp("us", tz="UTC")
    row = table.to_pylist()[0]
    assert row["u64"] == 2**64 - 1 and row["u8"] == 255
    assert row["d"] == Decimal("12345678901234567890123456789012345.123456789012345678901234567890")
    assert row["tm"] == -dt.timedelta(hours=838, minutes=59, seconds=59)
    assert '"é"' in row["j"] or "\\u00e9" in row["j"]
    assert (row["e"], row["s"], row["b"]) == ("big", "a,b", 0b10101)
    assert (row["bl"], row["vb"], row["y"]) == (b"\x00\xff", b"\x01\x02", 2024)
    assert row["ts"] == dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    assert row["emoji"] == "😀 漢字"
    assert all(v is None for k, v in table.to_pylist()[1].items() if k != "id")
    # discovery gives the same Arrow types, and COLUMN_TYPE as the source type
    (info,) = c.introspect([env.db])
    for column in info.columns:
        assert column.arrow_type == types[column.name], column.name
    assert info.column("u64") is not None
    assert info.column("u64").source_type == "bigint(20) unsigned"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["null", "error"])
def test_zero_dates(env: Env, mode: str) -> None:
    env.run(
        "SET SESSION sql_mode = ''",
        f"CREATE TABLE {env.db}.z (id INT, d DATE, t DATETIME)",
        f"INSERT INTO {env.db}.z VALUES (1, '0000-00-00', '0000-00-00 00:00:00'), "
        "(2, '2024-01-01', '2024-01-01 10:00:00')",
    )
    c = env.connector(zero_dates=mode)
    sql = f"SELECT d, t FROM {env.db}.z ORDER BY id"
    if mode == "error":
        with pytest.raises(SourceQueryError, match="zero or partial date"):
            read(c.execute(sql))
        return
    assert read(c.execute(sql)).to_pylist() == [
        {"d": None, "t": None},
        {"d": dt.date(2024, 1, 1), "t": dt.datetime(2024, 1, 1, 10)},
    ]


def test_aware_datetime_parameter_is_bound_as_utc(env: Env) -> None:
    env.run(
        f"CREATE TABLE {env.db}.e (id INT, ts TIMESTAMP NULL)",
        f"INSERT INTO {env.db}.e VALUES (1, '2024-01-01 10:00:00'), (2, '2024-01-01 12:00:00')",
    )
    c = env.connector()
    plus2 = dt.timezone(dt.timedelta(hours=2))
    table = read(
        c.execute(
            f"SELECT id FROM {env.db}.e WHERE ts > %s ORDER BY id",
            [dt.datetime(2024, 1, 1, 13, 0, tzinfo=plus2)],  # 11:00 UTC
        )
    )
    assert table.column("id").to_pylist() == [2]


def test_errors_never_echo_values_or_the_password(env: Env) -> None:
    c = env.connector()
    with pytest.raises(SourceQueryError) as info:
        read(c.execute("SELECT 'secret-value-123' FROM"))
    assert "secret-value-123" not in str(info.value)
    assert "1064" in str(info.value) and info.value.sqlstate == "42000"
    with pytest.raises(SourceQueryError) as info:
        read(c.execute(f"SELECT nope_secret_col FROM {env.db}.missing_secret_table"))
    assert "secret" not in str(info.value) and info.value.sqlstate == "42S02"
    with pytest.raises(InvalidArgument):
        read(c.execute("SELECT %s, %s", [1]))
    with pytest.raises(InvalidArgument):
        read(c.execute("SELECT %s", [{"a": 1}]))
    # a literal percent doubled by the compiler reaches the server as one
    assert read(c.execute("SELECT 'a%%' AS p, 7 %% 4 AS m")).to_pylist() == [{"p": "a%", "m": 3}]
    bad = MySQLConnector(
        ConnectorConfig({**env.base, "user": "no_such_user_x"}, password="hunter2-secret")
    )
    with pytest.raises(Exception) as refused:
        bad.test()
    assert "hunter2-secret" not in str(refused.value)
    bad.close()


def test_pool_is_bounded_and_reused(env: Env) -> None:
    c = env.connector(pool_max=1, pool_timeout=1)
    first = c.execute("SELECT 1 AS a")
    from fabric.errors import SourceUnavailable

    with pytest.raises(SourceUnavailable, match="busy"):
        c.execute("SELECT 2 AS b")
    first.close()
    ids = set()
    for _ in range(3):
        ids.add(read(c.execute("SELECT CONNECTION_ID() AS i")).column("i")[0].as_py())
    assert len(ids) == 1  # one pooled connection, reused


def test_writes_refused_inside_read_only_transaction(env: Env) -> None:
    env.run(f"CREATE TABLE {env.db}.w (id INT)")
    c = env.connector()
    with pytest.raises(SourceQueryError) as info:
        read(c.execute(f"INSERT INTO {env.db}.w VALUES (1)"))
    assert info.value.sqlstate == "25006"


def test_column_type_mapping_table() -> None:
    assert mysql_column_arrow_type("int", "int(10) unsigned") == pa.uint32()
    assert mysql_column_arrow_type("tinyint", "tinyint(1)") == pa.int8()
    assert mysql_column_arrow_type("decimal", "decimal(12,3)", 12, 3) == pa.decimal128(12, 3)
    assert mysql_column_arrow_type("varchar", "varchar(10)", charset="utf8mb4") == pa.string()
    assert mysql_column_arrow_type("varbinary", "varbinary(10)") == pa.binary()
    assert mysql_column_arrow_type("enum", "enum('a')", charset="utf8mb4") == pa.string()
    assert mysql_column_arrow_type("time", "time(6)") == pa.duration("us")


def test_pooled_connections_the_server_ended_are_replaced_before_use(env: Env) -> None:
    c = env.connector()
    held = [c.execute("SELECT 1 AS one", (), timeout=30) for _ in range(2)]
    for handle in held:  # both pooled connections used, then idle in the pool
        assert read(handle).column("one").to_pylist() == [1]
    thread_ids = [conn.thread_id for _, conn in c._pool._idle]
    assert len(thread_ids) == 2
    env.run(*(f"KILL {thread_id}" for thread_id in thread_ids))  # as a restart would

    def ended() -> bool:
        with env.admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.PROCESSLIST")
            alive = {row[0] for row in cur.fetchall()}
        return not alive & set(thread_ids)

    wait_for(ended, 10)
    for _ in range(4):
        assert read(c.execute("SELECT 2 AS two", (), timeout=30)).column("two").to_pylist() == [2]
