"""The connector contract, checked against every connector on a real server."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from connectors.base import ParamStyle, QueryHandle
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    SourceQueryError,
    SourceUnavailable,
)
from fabric.model import TableKind
from tests.conformance.conftest import Source, expect_failure

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))

# name: (postgres type, duckdb type, arrow type, values)
TYPES: dict[str, tuple[str, str, pa.DataType, list[Any]]] = {
    "int16": ("int2", "SMALLINT", pa.int16(), [-32768, 32767, 0, None]),
    "int32": ("int4", "INTEGER", pa.int32(), [-(2**31), 2**31 - 1, None]),
    "int64": ("int8", "BIGINT", pa.int64(), [-(2**63), 2**63 - 1, None]),
    "float32": ("float4", "REAL", pa.float32(), [1.5, -2.25, 0.0, None]),
    "float64": ("float8", "DOUBLE", pa.float64(), [0.1, -1e308, 5e-324, None]),
    "decimal_38_10": (
        "numeric(38,10)",
        "DECIMAL(38,10)",
        pa.decimal128(38, 10),
        [
            Decimal("1234567890123456789012345678.0123456789"),
            Decimal("-9999999999999999999999999999.9999999999"),
            Decimal("0E-10"),
            None,
        ],
    ),
    "decimal_10_2": (
        "numeric(10,2)",
        "DECIMAL(10,2)",
        pa.decimal128(10, 2),
        [Decimal("12345678.90"), Decimal("-0.01"), None],
    ),
    "text": (
        "text",
        "VARCHAR",
        pa.string(),
        [
            "héllo wörld",
            "😀 emoji ✓ 漢字",
            "",
            None,
            'quote " comma , newline \n tab \t',
            "back\\slash",
        ],
    ),
    "bool": ("bool", "BOOLEAN", pa.bool_(), [True, False, None]),
    "date": (
        "date",
        "DATE",
        pa.date32(),
        [dt.date(1970, 1, 1), dt.date(2024, 2, 29), dt.date(9999, 12, 31), None],
    ),
    "timestamp": (
        "timestamp",
        "TIMESTAMP",
        pa.timestamp("us"),
        [dt.datetime(2024, 1, 2, 3, 4, 5, 678901), dt.datetime(1900, 1, 1), None],
    ),
    "timestamptz": (
        "timestamptz",
        "TIMESTAMPTZ",
        pa.timestamp("us", tz="UTC"),
        [
            dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=PLUS2),
            dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
            None,
        ],
    ),
    "bytes": ("bytea", "BLOB", pa.binary(), [b'\x00\xff\x10\n,"', b"", None]),
    "time": (
        "time",
        "TIME",
        pa.time64("us"),
        [dt.time(1, 2, 3, 250000), dt.time(23, 59, 59), None],
    ),
    "interval": (
        "interval",
        "INTERVAL",
        pa.month_day_nano_interval(),
        [dt.timedelta(days=3, seconds=5, microseconds=7), dt.timedelta(0), None],
    ),
}


# Column types of the same cases on the other sources (None: the source has no such type).
OTHER_TYPES: dict[str, dict[str, str | None]] = {
    "mysql": {
        "int16": "SMALLINT",
        "int32": "INT",
        "int64": "BIGINT",
        "float32": "FLOAT",
        "float64": "DOUBLE",
        "decimal_38_10": "DECIMAL(38,10)",
        "decimal_10_2": "DECIMAL(10,2)",
        "text": "LONGTEXT",
        "bool": "BOOLEAN",
        "date": "DATE",
        "timestamp": "DATETIME(6)",
        "timestamptz": "TIMESTAMP(6) NULL",
        "bytes": "BLOB",
        "time": "TIME(6)",
        "interval": None,
    },
    "sqlserver": {
        "int16": "SMALLINT",
        "int32": "INT",
        "int64": "BIGINT",
        "float32": "REAL",
        "float64": "FLOAT",
        "decimal_38_10": "DECIMAL(38,10)",
        "decimal_10_2": "DECIMAL(10,2)",
        "text": "NVARCHAR(MAX)",
        "bool": None,
        "date": "DATE",
        "timestamp": "DATETIME2(6)",
        "timestamptz": "DATETIMEOFFSET(6)",
        "bytes": "VARBINARY(MAX)",
        "time": "TIME(6)",
        "interval": None,
    },
}


def column_type(source: Source, type_name: str) -> str:
    pg_type, duck_type, _, _ = TYPES[type_name]
    if source.name == "postgres":
        return pg_type
    if source.name == "duckdb":
        return duck_type
    other = OTHER_TYPES[source.name][type_name]
    if other is None:
        pytest.fail(f"{source.name} has no column type for {type_name}")
    return other


def read(handle: QueryHandle) -> pa.Table:
    with handle:
        return handle.reader.read_all()


def test_class_constants(source: Source) -> None:
    c = source.connector()
    assert c.kind == source.name
    assert c.dialect == source.dialect
    assert c.param_style is (ParamStyle.QMARK if source.name == "duckdb" else ParamStyle.FORMAT)
    c.test()


@pytest.mark.parametrize("type_name", sorted(TYPES))
def test_type_round_trip(request: pytest.FixtureRequest, source: Source, type_name: str) -> None:
    expect_failure(request, source, f"type:{type_name}")
    _, _, arrow_type, values = TYPES[type_name]
    col_type = column_type(source, type_name)
    source.run(
        f"CREATE TABLE {{s}}.t (id integer PRIMARY KEY, v {col_type})",
        "INSERT INTO {s}.t VALUES ({p}, {p})",
        rows=[(i, v) for i, v in enumerate(values)],
    )
    c = source.connector()
    table = read(c.execute(source.sql("SELECT v FROM {s}.t ORDER BY id")))
    assert table.schema.field("v").type == arrow_type
    got = table.column("v").to_pylist()
    if type_name == "interval":
        expected = [
            None
            if v is None
            else pa.MonthDayNano([0, v.days, (v.seconds * 1_000_000 + v.microseconds) * 1000])
            for v in values
        ]
        assert got == expected
    elif type_name == "float32":
        assert got == [None if v is None else pytest.approx(v) for v in values]
    else:
        assert got == values
    # the same through the parameterized path
    table2 = read(c.execute(source.sql("SELECT v FROM {s}.t WHERE id >= {p} ORDER BY id"), [0]))
    assert table2.equals(table)
    # and row by row through a key lookup, from an event loop where the connector can
    # (execute_small), else from execute: the same values either way
    lookup = source.sql("SELECT v FROM {s}.t WHERE id = {p}")
    for key in range(len(values)):
        handle = asyncio.run(c.execute_small(lookup, [key], timeout=30, max_rows=1))
        if source.name == "postgres":
            assert handle is not None and handle.buffered
        if handle is not None:
            assert read(handle).equals(read(c.execute(lookup, [key])))


def test_nulls_and_empty_strings_are_distinct(source: Source) -> None:
    source.run(
        "CREATE TABLE {s}.t (id integer, a text, b text)",
        "INSERT INTO {s}.t VALUES ({p}, {p}, {p})",
        rows=[(1, "", None), (2, None, ""), (3, '""', "NULL")],
    )
    c = source.connector()
    for params in ([], [0]):
        where = " WHERE id > {p}" if params else ""
        table = read(
            c.execute(source.sql("SELECT a, b FROM {s}.t" + where + " ORDER BY id"), params)
        )
        assert table.to_pylist() == [
            {"a": "", "b": None},
            {"a": None, "b": ""},
            {"a": '""', "b": "NULL"},
        ]


def test_introspect_composite_keys(source: Source) -> None:
    source.run(
        "CREATE TABLE {s}.parent (a integer NOT NULL, b varchar(20) NOT NULL, c numeric(12,3), "
        "PRIMARY KEY (b, a))",
        "CREATE TABLE {s}.child (id integer PRIMARY KEY, x varchar(20), y integer, "
        "FOREIGN KEY (x, y) REFERENCES {s}.parent (b, a))",
        "CREATE VIEW {s}.parent_view AS SELECT a, b FROM {s}.parent",
    )
    c = source.connector()
    tables = {t.name: t for t in c.introspect([source.schema])}
    assert set(tables) == {"parent", "child", "parent_view"}
    parent, child, view = tables["parent"], tables["child"], tables["parent_view"]
    assert all(t.schema == source.schema for t in tables.values())
    assert parent.primary_key == ("b", "a")
    assert [col.name for col in parent.columns] == ["a", "b", "c"]
    a, b, col_c = parent.columns
    assert (a.arrow_type, a.nullable) == (pa.int32(), False)
    assert (b.arrow_type, b.nullable) == (pa.string(), False)
    assert (col_c.arrow_type, col_c.nullable) == (pa.decimal128(12, 3), True)
    assert "12" in col_c.source_type and "3" in col_c.source_type
    assert child.primary_key == ("id",)
    assert len(child.foreign_keys) == 1
    fk = child.foreign_keys[0]
    assert fk.columns == ("x", "y")
    assert fk.referenced_columns == ("b", "a")
    assert (fk.referenced_schema, fk.referenced_table) == (source.schema, "parent")
    assert fk.name
    assert view.kind is TableKind.VIEW and parent.kind is TableKind.TABLE
    assert [col.name for col in view.columns] == ["a", "b"]
    # None lists every user schema, never a system one
    everything = c.introspect()
    assert {(t.schema, t.name) for t in everything} >= {(source.schema, "parent")}
    assert not {t.schema for t in everything} & {"pg_catalog", "information_schema", "pg_toast"}
    assert c.introspect(["no_such_schema"]) == []


PARAMS: list[Any] = [
    7,
    -(2**63),
    1.25,
    Decimal("12345.6789"),
    "héllo 😀",
    "",
    True,
    False,
    dt.date(2024, 2, 29),
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=PLUS2),
    b"\x00\x01\xff",
    None,
]


@pytest.mark.parametrize("value", PARAMS, ids=lambda v: f"{type(v).__name__}:{v!r}"[:40])
def _param_case(value: Any) -> str:
    if isinstance(value, bool):
        return "param:bool"
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return "param:aware-datetime"
    return f"param:{type(value).__name__}"


def _cast_type(source: Source, value: Any) -> str:
    """The SQL type to cast a bound value to, per source."""
    name = source.name
    if isinstance(value, bool):
        return {"mysql": "SIGNED", "sqlserver": "BIT"}.get(name, "BOOLEAN")
    if isinstance(value, int):
        return "SIGNED" if name == "mysql" else "BIGINT"
    if isinstance(value, float):
        return {"postgres": "DOUBLE PRECISION", "sqlserver": "FLOAT"}.get(name, "DOUBLE")
    if isinstance(value, Decimal):
        return "NUMERIC(20,4)" if name == "postgres" else "DECIMAL(20,4)"
    if isinstance(value, dt.datetime):
        if name == "mysql":
            return "DATETIME(6)"
        if name == "sqlserver":
            return "DATETIMEOFFSET(6)" if value.tzinfo else "DATETIME2(6)"
        return "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, bytes):
        return {"postgres": "BYTEA", "mysql": "BINARY", "sqlserver": "VARBINARY(MAX)"}.get(
            name, "BLOB"
        )
    return {"postgres": "TEXT", "mysql": "CHAR", "sqlserver": "NVARCHAR(MAX)"}.get(name, "VARCHAR")


@pytest.mark.parametrize("value", PARAMS, ids=lambda v: f"{type(v).__name__}:{v!r}"[:40])
def test_parameters_of_every_type(
    request: pytest.FixtureRequest, source: Source, value: Any
) -> None:
    # The compiler places parameters where their type is known; a bare `SELECT $1` of a
    # string is indeterminate in PostgreSQL, so the value is cast to its column type here.
    expect_failure(request, source, _param_case(value))
    sql_type = _cast_type(source, value)
    c = source.connector()
    is_null = "CAST({p} AS " + sql_type + ") IS NULL"
    if source.name in ("mysql", "sqlserver"):
        # no boolean values: a predicate is not a value (T-SQL) or is 1/0 (MySQL)
        is_null = f"CASE WHEN {is_null} THEN 'yes' ELSE 'no' END"
    sql = f"SELECT CAST({{p}} AS {sql_type}) AS v, {is_null} AS n"
    table = read(c.execute(source.sql(sql), [value, value]))
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["n"] in ((True, "yes") if value is None else (False, "no"))
    got = row["v"]
    if isinstance(value, Decimal):
        assert Decimal(got) == value
    else:
        assert got == value and type(got) is type(value)


def test_parameter_filters_rows(source: Source) -> None:
    source.run(
        "CREATE TABLE {s}.t (id integer, name text, ts timestamptz)",
        "INSERT INTO {s}.t VALUES ({p}, {p}, {p})",
        rows=[
            (i, f"n{i}", dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(hours=i))
            for i in range(10)
        ],
    )
    c = source.connector()
    table = read(
        c.execute(
            source.sql("SELECT id FROM {s}.t WHERE name LIKE {p} AND ts >= {p} ORDER BY id"),
            ["n%", dt.datetime(2024, 1, 1, 7, tzinfo=UTC)],
        )
    )
    assert table.column("id").to_pylist() == [7, 8, 9]
    literal = read(
        c.execute(
            source.sql("SELECT count(*) AS n FROM {s}.t WHERE name LIKE 'n1%'").replace(
                "%", "%%" if source.p == "%s" else "%"
            )
        )
    )
    assert literal.column("n").to_pylist() == [1]


@pytest.mark.parametrize("with_params", [False, True])
def test_empty_result_keeps_schema(source: Source, with_params: bool) -> None:
    source.run("CREATE TABLE {s}.t (id integer, name text, amount numeric(10,2), day date)")
    c = source.connector()
    sql = "SELECT id, name, amount, day FROM {s}.t" + (" WHERE id > {p}" if with_params else "")
    table = read(c.execute(source.sql(sql), [1] if with_params else []))
    assert table.num_rows == 0
    assert table.schema.names == ["id", "name", "amount", "day"]
    assert table.schema.types == [pa.int32(), pa.string(), pa.decimal128(10, 2), pa.date32()]


def test_wide_row(source: Source) -> None:
    c = source.connector()
    sql = "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(200))
    table = read(c.execute(sql))
    assert table.num_columns == 200 and table.num_rows == 1
    assert table.to_pylist()[0] == {f"c{i}": i for i in range(200)}


def test_long_value(request: pytest.FixtureRequest, source: Source) -> None:
    expect_failure(request, source, "long_value")
    big = "ab😀\n," * 200_000  # 1.6 MB of UTF-8 with newlines and commas
    source.run(
        "CREATE TABLE {s}.t (id integer, v text)",
        "INSERT INTO {s}.t VALUES ({p}, {p})",
        rows=[(1, big), (2, "small")],
    )
    c = source.connector()
    table = read(c.execute(source.sql("SELECT v FROM {s}.t ORDER BY id")))
    assert table.column("v").to_pylist() == [big, "small"]
    table = read(c.execute(source.sql(f"SELECT {source.length_function}({{p}}) AS n"), [big]))
    assert table.column("n").to_pylist() == [len(big)]


@pytest.mark.parametrize("with_params", [False, True])
def test_batch_rows_respected(source: Source, with_params: bool) -> None:
    c = source.connector()
    n = "{p}" if with_params else "10000"
    with c.execute(
        source.sql(f"SELECT i FROM {source.series(n)} ORDER BY i"),
        [10000] if with_params else [],
        batch_rows=1000,
    ) as handle:
        sizes = [batch.num_rows for batch in handle.reader]
    assert sum(sizes) == 10000
    assert len(sizes) >= 10
    assert max(sizes) <= 1000


def _slow_sql(source: Source) -> str:
    if source.name == "postgres":
        return "SELECT pg_sleep(30) AS s"
    if source.name == "mysql":
        return "SELECT SLEEP(30) AS s"
    if source.name == "sqlserver":
        return "WAITFOR DELAY '00:00:30'; SELECT 1 AS s"
    return "SELECT sum(a.range * b.range) AS s FROM range(1000000) a, range(1000000) b"


def test_timeout_raises_deadline_exceeded(source: Source) -> None:
    c = source.connector()
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        read(c.execute(_slow_sql(source), timeout=0.3))
    assert time.monotonic() - start < 5
    # the source stopped the query and the connector still serves
    assert read(c.execute("SELECT 1 AS one")).to_pylist() == [{"one": 1}]


def test_cancel_raises_cancelled(source: Source) -> None:
    c = source.connector()
    handle = c.execute(_slow_sql(source))
    outcome: dict[str, BaseException | None] = {}
    started = threading.Event()

    def consume() -> None:
        started.set()
        try:
            handle.reader.read_all()
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    started.wait(5)
    source.wait_running()
    handle.cancel()
    reader.join(5)
    assert not reader.is_alive(), "cancel did not stop the read"
    assert isinstance(outcome["error"], Cancelled)
    handle.close()
    handle.close()  # idempotent
    assert read(c.execute("SELECT 2 AS two")).to_pylist() == [{"two": 2}]


def test_cancel_before_reading(source: Source) -> None:
    c = source.connector()
    handle = c.execute(source.sql(f"SELECT i FROM {source.series(1000)}"))
    handle.cancel()
    with pytest.raises(Cancelled):
        handle.reader.read_all()
    handle.close()


def test_close_without_reading_returns_resources(source: Source) -> None:
    c = source.connector()
    for _ in range(8):  # more than the pool holds: a leak would block here
        handle = c.execute(source.sql(f"SELECT i FROM {source.series(100000)}"), batch_rows=10)
        next(iter(handle.reader))
        handle.close()
    assert read(c.execute("SELECT 3 AS three")).to_pylist() == [{"three": 3}]


def test_source_down_is_unavailable(source: Source) -> None:
    c = source.down_connector()
    with pytest.raises(SourceUnavailable) as info:
        c.test()
    assert "secret-password-xyz" not in str(info.value)
    with pytest.raises(SourceUnavailable) as info:
        read(c.execute("SELECT 1"))
    assert "secret-password-xyz" not in str(info.value)
    c.close()


def _assert_clean(error: FabricError, *secrets: str) -> None:
    text = f"{error} {error!r} {error.message}"
    for secret in secrets:
        assert secret not in text
    assert error.__cause__ is None


def test_division_by_zero_is_source_query_error(
    request: pytest.FixtureRequest, source: Source
) -> None:
    expect_failure(request, source, "division_by_zero")
    c = source.connector()
    sql = "SELECT 1 // 0 AS x" if source.name == "duckdb" else "SELECT 1 / 0 AS x"
    with pytest.raises(SourceQueryError) as info:
        read(c.execute(sql))
    if source.name == "postgres":
        assert info.value.sqlstate == "22012"
        assert str(info.value) == (
            "the source refused the query: division_by_zero (SQLSTATE 22012)"
        )


@pytest.mark.parametrize("with_params", [False, True])
def test_bad_cast_does_not_echo_the_value(
    request: pytest.FixtureRequest, source: Source, with_params: bool
) -> None:
    expect_failure(request, source, "bad_cast")
    source.run(
        "CREATE TABLE {s}.secrets (id integer, v text)",
        "INSERT INTO {s}.secrets VALUES ({p}, {p})",
        rows=[(1, "secret-value-123")],
    )
    c = source.connector()
    integer = "SIGNED" if source.name == "mysql" else "INTEGER"
    sql = f"SELECT CAST(v AS {integer}) AS n FROM {{s}}.secrets" + (
        " WHERE id = {p}" if with_params else ""
    )
    with pytest.raises(SourceQueryError) as info:
        read(c.execute(source.sql(sql), [1] if with_params else []))
    _assert_clean(info.value, "secret-value-123")
    with pytest.raises(SourceQueryError) as info:
        read(c.execute(source.sql(f"SELECT CAST({{p}} AS {integer}) AS n"), ["secret-param-456"]))
    _assert_clean(info.value, "secret-param-456")


def test_writes_are_refused(source: Source) -> None:
    source.run("CREATE TABLE {s}.t (id integer)")
    c = source.connector()
    with pytest.raises(SourceQueryError):
        read(c.execute(source.sql("INSERT INTO {s}.t VALUES (1)")))
    assert read(c.execute(source.sql("SELECT count(*) AS n FROM {s}.t"))).to_pylist() == [{"n": 0}]


def test_concurrent_queries(source: Source) -> None:
    c = source.connector()
    results: list[int] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            table = read(c.execute(source.sql(f"SELECT sum(i) AS s FROM {source.series(k)}")))
            results.append(int(table.column("s")[0].as_py()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(1000, 1008)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(results) == sorted(k * (k + 1) // 2 for k in range(1000, 1008))
