"""The PostgreSQL connector against a real server: results equal psycopg's own."""

from __future__ import annotations

import datetime as dt
import math
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
        "u": pa.decimal128(38, 20),  # sized by the values: the largest scale is 20
        "txt": pa.string(),
        "e": pa.string(),
        "d": pa.date32(),
        "ts": pa.timestamp("us"),
        "tz": pa.timestamp("us", tz="UTC"),
        "ok": pa.bool_(),
        "c": pa.string(),
        "m3": pa.decimal128(38, 2),  # PostgreSQL's display scale of numeric(10,2) * 3
        "total": pa.decimal128(38, 2),
        "mean": pa.decimal128(38, 20),
    }
    assert table.column("c").to_pylist()[0] == "x  "  # char(n) keeps its padding


def test_introspect_matches_execute_types(typed: Env) -> None:
    [info] = typed.connector.introspect([typed.schema])
    table = read(typed.connector.execute(f"SELECT * FROM {typed.schema}.t"))
    catalog_types = [c.arrow_type for c in info.columns]
    # an unconstrained numeric has no type before its values: the catalog shows the
    # widest it may take, the result the one its values need
    assert catalog_types[4] == pa.decimal256(76, 38)
    assert table.schema.types[4] == pa.decimal128(38, 20)
    catalog_types[4] = table.schema.types[4]
    assert catalog_types == table.schema.types
    assert info.primary_key == ("id",)
    assert [c.source_type for c in info.columns][3:5] == ["numeric(10,2)", "numeric"]
    assert info.columns[0].nullable is False and info.columns[1].nullable is True


def test_unrepresentable_numeric_is_an_error_not_a_rounding(env: Env) -> None:
    for sql in (
        "SELECT 'NaN'::numeric AS v",
        "SELECT 'Infinity'::numeric AS v",
        "SELECT (10::numeric ^ 80) AS v",  # 81 integer digits: no Arrow decimal holds it
    ):
        with pytest.raises(SourceQueryError) as info:
            read(env.connector.execute(sql))
        assert "column #1" in str(info.value)
        assert "NaN" not in str(info.value) and "Infinity" not in str(info.value)
    exact = read(env.connector.execute("SELECT 1::numeric / 3 AS v, 1e-38::numeric AS w"))
    assert exact.to_pylist() == [{"v": Decimal("0.33333333333333333333"), "w": Decimal("1e-38")}]
    assert exact.schema.types == [pa.decimal128(38, 20), pa.decimal128(38, 38)]


@pytest.mark.parametrize("with_params", [False, True], ids=["copy", "cursor"])
def test_numeric_is_sized_by_its_values(env: Env, with_params: bool) -> None:
    """decimal128(38, s) when the values fit, decimal256 only when they need it, exact."""
    where = " WHERE 1 = %s" if with_params else ""
    params = [1] if with_params else []

    def one(sql: str) -> pa.Table:
        return read(env.connector.execute(sql + where, params))

    tiny = one("SELECT 1e-40::numeric AS v")
    assert tiny.schema.types == [pa.decimal256(76, 40)]
    assert tiny.column(0).to_pylist() == [Decimal("1e-40")]
    big = one("SELECT (10::numeric ^ 40) AS v")
    assert big.schema.types == [pa.decimal256(76, 16)]
    assert big.column(0).to_pylist() == [Decimal(10) ** 40]
    declared = one("SELECT 12.5::numeric(50, 3) AS v")
    assert declared.schema.types == [pa.decimal128(38, 3)]
    assert declared.column(0).to_pylist() == [Decimal("12.500")]
    wide = one("SELECT (10::numeric ^ 40)::numeric(50, 3) AS v")
    assert wide.schema.types == [pa.decimal256(50, 3)]
    empty = one("SELECT v FROM (SELECT 1.5::numeric AS v LIMIT 0) AS t")
    assert empty.num_rows == 0 and pa.types.is_decimal128(empty.schema.types[0])


def test_a_later_numeric_that_does_not_fit_the_first_batch_fails_the_read(env: Env) -> None:
    # the first batch (2 rows) has scale 1; the third row needs scale 3: an error naming
    # the column, never 1.234 rounded
    sql = (
        "SELECT v FROM (VALUES (1, 1.5::numeric), (2, 2.5), (3, 1.234)) AS t(i, v) "
        "WHERE i >= %s ORDER BY i"
    )
    handle = env.connector.execute(sql, [0], batch_rows=2)
    try:
        reader = handle.reader
        assert reader.schema.types == [pa.decimal128(38, 1)]
        assert reader.read_next_batch().column(0).to_pylist() == [Decimal("1.5"), Decimal("2.5")]
        with pytest.raises(SourceQueryError) as info:
            reader.read_next_batch()
        assert "column #1" in str(info.value) and "1.234" not in str(info.value)
    finally:
        handle.close()


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


# -- the parameterized path: one pipelined round trip, prepared statements, fast decode --

_DECODE_CASES: list[tuple[int, int, list[str]]] = [
    (20, -1, ["0", "-9223372036854775808", "9223372036854775807", "9223372036854775808"]),
    (21, -1, ["32767", "-32768", "32768"]),
    (23, -1, ["2147483647", "-2147483648", "2147483648", "+5", "1_000", "٣", "5.0"]),
    (700, -1, ["NaN", "Infinity", "-Infinity", "3.4028235e+38", "1.4e-45", "-0", "0.1"]),
    (
        701,
        -1,
        [
            "NaN",
            "-Infinity",
            "1.7976931348623157e+308",
            "5e-324",
            "-0",
            "0.1",
            "1.2345678901234567e-300",
            "123456789012345680000",
        ],
    ),
    (
        1700,
        ((10 << 16) | 2) + 4,
        [
            "12345.67",
            "-0.00",
            "-99999999.99",
            "NaN",
            "Infinity",
            "123456789.00",
            "1.5",
            "1.555",
            "1.550",
            "1e2",
            "1_0.5",
        ],
    ),
    (
        1700,
        -1,
        [
            "0.33333333333333333333",
            "1e-38",
            "NaN",
            "12345678901234567890123456789012345678.5",
            "0." + "0" * 38 + "1",
        ],
    ),
    (16, -1, ["t", "f", "true"]),
    (1082, -1, ["2024-02-29", "0001-01-01", "infinity", "0044-03-15 BC", "10000-01-01"]),
    (
        1114,
        -1,
        ["2024-01-02 03:04:05.123456", "1999-12-31 23:59:59", "infinity", "0044-03-15 00:00:00 BC"],
    ),
    (
        1184,
        -1,
        [
            "2024-01-02 08:04:05.123456+00",
            "2000-01-01 00:00:00+05:30",
            "infinity",
            "2024-01-02 08:04:05+00",
            "2024-01-02T08:04:05Z",
            "2024-01-02 08:04:05",
        ],
    ),
    (1083, -1, ["04:05:06.5", "23:59:59.999999", "24:00:00"]),
    (17, -1, ["\\x00ff", "\\x", "00"]),
    (1186, -1, ["P1Y2M-3DT4H5M6.5S", "PT0S", "1 day"]),
    (25, -1, ["", "héllo", 'line\nbreak, "q"', "NULL"]),
]


@pytest.mark.parametrize(
    ("oid", "typmod", "values"), _DECODE_CASES, ids=[str(c[0]) for c in _DECODE_CASES]
)
def test_every_decode_route_gives_the_same_values_and_errors(
    oid: int, typmod: int, values: list[str]
) -> None:
    """Python parsing (a few rows), Arrow casts and the CSV reader agree on every value,
    including the ones that must fail."""
    from connectors.postgres.decode import PgColumn, TextDecoder

    decoder = TextDecoder([PgColumn("v", oid, typmod), PgColumn("n", 23)])

    def outcome(fn: Any, value: str | None) -> Any:
        try:
            batch = fn([(value, "1"), (None, None)])
        except SourceQueryError as exc:
            return ("error", str(exc))
        return ("ok", batch.schema, [repr(v) for v in batch.column(0).to_pylist()])

    for value in [*values, None]:
        csv = outcome(decoder.from_text_rows_csv, value)
        assert outcome(decoder.from_text_rows_arrow, value) == csv, value
        assert outcome(decoder.from_text_rows, value) == csv, value
        python = decoder.from_text_rows_python([(value, "1"), (None, None)])
        if python is not None:
            assert outcome(lambda _rows, b=python: b, value) == csv, value


_CANONICAL: list[tuple[int, int, str, Any]] = [
    (20, -1, "-9223372036854775808", -9223372036854775808),
    (21, -1, "32767", 32767),
    (23, -1, "-17", -17),
    (701, -1, "0.1", 0.1),
    (701, -1, "-Infinity", float("-inf")),
    (1700, ((10 << 16) | 2) + 4, "-12345.67", Decimal("-12345.67")),
    (1700, -1, "0.33333333333333333333", Decimal("0.33333333333333333333")),
    (16, -1, "t", True),
    (1082, -1, "2024-02-29", dt.date(2024, 2, 29)),
    (1114, -1, "2024-01-02 03:04:05.123456", dt.datetime(2024, 1, 2, 3, 4, 5, 123456)),
    (1184, -1, "2024-01-02 08:04:05+00", dt.datetime(2024, 1, 2, 8, 4, 5, tzinfo=dt.UTC)),
    (1083, -1, "04:05:06.5", dt.time(4, 5, 6, 500000)),
    (25, -1, 'line\nbreak, "q"', 'line\nbreak, "q"'),
]


@pytest.mark.parametrize(
    ("oid", "typmod", "text", "expected"), _CANONICAL, ids=[f"{c[0]}:{c[2]}" for c in _CANONICAL]
)
def test_a_few_rows_of_canonical_values_take_the_python_route(
    oid: int, typmod: int, text: str, expected: Any
) -> None:
    from connectors.postgres.decode import SMALL_ROWS, PgColumn, TextDecoder

    decoder = TextDecoder([PgColumn("v", oid, typmod), PgColumn("n", 23)])
    batch = decoder.from_text_rows_python([(text, "1"), (None, None)])
    assert batch is not None, "a canonical value fell back to the vectorized route"
    assert batch.schema == decoder.schema
    sized = decoder.to_sized(batch, decoder.sized_schema(batch)) if decoder.sized else batch
    got = sized.column(0).to_pylist()[0]
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected and type(got) is type(expected)
    assert batch.equals(decoder.from_text_rows_arrow([(text, "1"), (None, None)]))
    # more rows than SMALL_ROWS take the vectorized route, with the same values
    many = [(text, "1")] * (SMALL_ROWS + 1)
    assert decoder.from_text_rows(many).equals(decoder.from_text_rows_arrow(many))


def test_types_without_an_exact_python_parser_take_the_vectorized_route() -> None:
    from connectors.postgres.decode import PgColumn, TextDecoder

    for oid in (700, 17, 1186):  # float4 (double rounding), bytea, interval
        decoder = TextDecoder([PgColumn("v", oid), PgColumn("n", 23)])
        assert decoder.from_text_rows_python([("1", "1")]) is None


def test_a_query_cannot_change_the_session_of_the_next_ones(typed: Env) -> None:
    env = typed
    # session-level changes a read-only query may make (set_config(..., false))
    tamper = (
        "SELECT set_config('extra_float_digits', '-10', false) AS a, "
        "set_config('default_transaction_read_only', 'off', false) AS b, "
        "set_config('bytea_output', 'escape', false) AS c, "
        "set_config('TimeZone', 'Asia/Kolkata', false) AS d, "
        "set_config('statement_timeout', '1', false) AS e WHERE 1 = %s"
    )
    check = (
        "SELECT 0.1::float8 + 0.2::float8 AS f, '\\x00ff'::bytea AS b, "
        "timestamptz '2000-01-01 00:00:00+00' AS t, pg_sleep(0.01)::text AS s WHERE 1 = %s"
    )
    for _ in range(6):  # both pooled connections, prepared and not
        read(env.connector.execute(tamper, [1]))
        row = read(env.connector.execute(check, [1])).to_pylist()[0]
        assert row["f"] == 0.30000000000000004 and row["b"] == b"\x00\xff"
        assert row["t"] == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        with pytest.raises(SourceQueryError) as info:
            read(
                env.connector.execute(
                    f"WITH w AS (INSERT INTO {env.schema}.t (id) VALUES (%s) RETURNING id) "
                    "SELECT * FROM w",
                    [97],
                )
            )
        assert info.value.sqlstate == "25006"
        with pytest.raises(SourceQueryError) as info:
            read(env.connector.execute(f"INSERT INTO {env.schema}.t (id) VALUES (%s)", [96]))
        # not a query: it takes the transaction path, where a cursor cannot hold it
        assert info.value.sqlstate in ("25006", "42601")
    count = env.admin.execute(f"SELECT count(*) FROM {env.schema}.t").fetchone()
    assert count == (3,)


def test_empty_parameterized_result_has_its_schema(typed: Env) -> None:
    for _ in range(3):
        table = read(
            typed.connector.execute(
                f"SELECT id, m, tz FROM {typed.schema}.t WHERE id = %s", [12345]
            )
        )
        assert table.num_rows == 0
        assert table.schema.types == [
            pa.int32(),
            pa.decimal128(10, 2),
            pa.timestamp("us", tz="UTC"),
        ]


def test_prepared_statements_heal_after_changes(env: Env) -> None:
    env.admin.execute(f"CREATE TABLE {env.schema}.p (v int4)")
    env.admin.execute(f"INSERT INTO {env.schema}.p VALUES (1)")
    sql = f"SELECT * FROM {env.schema}.p WHERE v >= %s"
    for _ in range(4):  # prepared on both pooled connections
        assert read(env.connector.execute(sql, [0])).to_pylist() == [{"v": 1}]
    env.admin.execute(f"ALTER TABLE {env.schema}.p ADD COLUMN w text DEFAULT 'x'")
    for _ in range(4):  # a stale statement fails at most once per connection, never wrong
        try:
            table = read(env.connector.execute(sql, [0]))
        except SourceQueryError:
            continue
        assert table.to_pylist() == [{"v": 1, "w": "x"}]
    assert read(env.connector.execute(sql, [0])).to_pylist() == [{"v": 1, "w": "x"}]
    # statements dropped behind the connector's back (the parameter-free path runs it)
    for _ in range(3):
        read(env.connector.execute("DEALLOCATE ALL"))
        assert read(env.connector.execute(sql, [0])).to_pylist() == [{"v": 1, "w": "x"}]


def test_closing_early_leaves_the_pool_healthy(env: Env) -> None:
    sql = "SELECT i, md5(i::text) AS h FROM generate_series(1, %s) AS g(i)"
    for _ in range(3):
        handle = env.connector.execute(sql, [2_000_000], batch_rows=1000)
        assert handle.reader.read_next_batch().num_rows == 1000
        handle.close()
        handle = env.connector.execute(sql, [10])
        handle.close()  # never read
    for i in range(4):
        assert read(env.connector.execute("SELECT %s::int AS i", [i])).to_pylist() == [{"i": i}]
    wait_until(lambda: env.active() == 0, 2.0)
