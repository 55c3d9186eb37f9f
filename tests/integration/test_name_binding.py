"""The compiler binds every name as the source does: checked against the real engines.

The tables of tests/support/name_binding.py are created in a private PostgreSQL schema
(and a MariaDB database, and an embedded DuckDB) with distinct values in every column.
For each generated query:

1. everything selected: what the compiler accepts returns what the source returns for
   the query as written (so its bindings are the source's), and what the source refuses
   the compiler refuses or compiles to a query the source refuses too;
2. the hidden columns unselected: the source's own binding is read by running the query
   as a role that may read only the selected columns (PostgreSQL checks the privilege of
   every column a query's names bind to, even ones the plan never reads). A query the
   source cannot run that way is refused by the compiler; any other query is accepted
   (unless the compiler refuses it with everything selected too: a construct it does not
   support) and returns what the source returns.

MariaDB checks column privileges too (as it binds names). DuckDB has none: there the
source's binding is read by running the query over views whose hidden columns raise an
error when read, and over the tables without the hidden columns (a binding that does
not touch a hidden column is the same there; one that does fails or reads other values).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from sqlglot import exp, parse_one

from connectors import registry
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot
from fabric.query.compiler import StatementCompiler
from tests.support.name_binding import (
    PHYSICAL,
    ROWS,
    SELECTED,
    canonical,
    catalog,
    ordered,
    queries,
)
from tests.support.servers import mariadb_url

COMPILER = StatementCompiler()
MAX_ROWS = 10_000
PARAM_STYLES = {spec.dialect: spec.param_style for spec in reversed(registry.specs())}

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Outcome:
    """What running a query gave: rows, or the error's class (SQLSTATE or message)."""

    rows: list[tuple[Any, ...]] | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rows is not None


def not_vacuous(stats: Counter[str]) -> None:
    """Many generated queries ran with the same rows both ways, and many were refused for
    binding a hidden column as the source does (the examples are the same every run)."""
    assert stats["same rows, everything selected"] >= 50, stats
    assert stats["same rows, hidden unselected"] >= 15, stats
    assert stats["refused, binds a hidden column"] >= 10, stats


def limited(sql: str) -> str:
    """`sql` with the row limit the compiler adds: the source then sorts both the same
    way (a bounded sort may order ties differently)."""
    return f"{sql} LIMIT {MAX_ROWS + 1}"


def compile_for(sql: str, snapshot: CatalogSnapshot, dialect: str) -> tuple[str, tuple[Any, ...]]:
    """The compiled text and its (empty) parameters; QueryRejected passes through."""
    compiled = COMPILER.compile(
        sql, snapshot, dialect=dialect, param_style=PARAM_STYLES[dialect], max_rows=MAX_ROWS
    )
    assert compiled.row_limit > len(ROWS["t1"]) ** 3
    return compiled.sql, compiled.bind({})


# -- PostgreSQL ---------------------------------------------------------------------------


class Postgres:
    """The tables in a private schema; `owner` reads everything, `reader` only what the
    selection shows (column privileges)."""

    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.schema = f"fabric_names_{tag}"
        self.role = f"fabric_names_{tag}"
        self.owner = psycopg.connect(url, autocommit=True)
        self.reader = psycopg.connect(url, autocommit=True)
        with self.owner.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {self.schema}")
            cur.execute(f"CREATE ROLE {self.role} NOLOGIN")
            cur.execute(f"GRANT USAGE ON SCHEMA {self.schema} TO {self.role}")
            for table, columns in PHYSICAL.items():
                cur.execute(
                    f"CREATE TABLE {self.schema}.{table} ({', '.join(f'{c} int' for c in columns)})"
                )
                marks = ", ".join(["%s"] * len(columns))
                cur.executemany(f"INSERT INTO {self.schema}.{table} VALUES ({marks})", ROWS[table])
                visible = ", ".join(SELECTED[table])
                cur.execute(f"GRANT SELECT ({visible}) ON {self.schema}.{table} TO {self.role}")
        for connection in (self.owner, self.reader):
            with connection.cursor() as cur:
                cur.execute(f"SET search_path = {self.schema}")
                cur.execute("SET statement_timeout = '5s'")
        with self.reader.cursor() as cur:
            cur.execute(f"SET ROLE {self.role}")

    def run(
        self, sql: str, params: tuple[Any, ...] = (), *, in_order: bool, as_reader: bool = False
    ) -> Outcome:
        connection = self.reader if as_reader else self.owner
        try:
            with connection.cursor() as cur:
                cur.execute(sql, params or None)
                return Outcome(canonical(cur.fetchall(), in_order))
        except psycopg.Error as error:
            return Outcome(None, error.sqlstate or type(error).__name__)

    def close(self) -> None:
        self.reader.close()
        with self.owner.cursor() as cur:
            cur.execute(f"DROP SCHEMA {self.schema} CASCADE")
            cur.execute(f"DROP ROLE {self.role}")
        self.owner.close()


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> Iterator[Postgres]:
    made = Postgres(postgres_url)
    try:
        yield made
    finally:
        made.close()


class Engine(Protocol):
    """A source whose `reader` may read only the selected columns."""

    schema: str

    def run(
        self, sql: str, params: tuple[Any, ...] = (), *, in_order: bool, as_reader: bool = False
    ) -> Outcome: ...


def ordered_alike(
    engine: Engine, dialect: str, text: str, params: tuple[Any, ...], expected: Outcome, **as_: Any
) -> bool:
    """Whether the compiled `text` returns `expected`'s rows in its order, up to rows the
    ORDER BY ties. For MySQL the compiled ORDER BY has a NULLS LAST key the source's text
    lacks, so ties may come in another order: the compiled sort keys, read as extra
    columns, cut its rows into runs of ties, and `expected` must be the same runs."""
    if dialect != "mysql":
        return engine.run(text, params, in_order=True, **as_) == expected
    tree = parse_one(text, read="mysql")
    width = len(tree.expressions)
    for index, item in enumerate(tree.args["order"].expressions):
        tree.append("expressions", exp.alias_(item.this.copy(), f"fabric_sort_key_{index}"))
    keyed = engine.run(tree.sql(dialect="mysql"), params, in_order=True, **as_)
    if keyed.rows is None or expected.rows is None:
        return keyed.rows is expected.rows
    runs: list[list[tuple[Any, ...]]] = []
    previous: tuple[Any, ...] | None = None
    for row in keyed.rows:
        key = row[width:]
        if not runs or key != previous:
            runs.append([])
        runs[-1].append(row[:width])
        previous = key
    position = 0
    for run in runs:
        chunk = expected.rows[position : position + len(run)]
        if sorted(chunk, key=repr) != sorted(run, key=repr):
            return False
        position += len(run)
    return position == len(expected.rows)


def check_with_privileges(
    engine: Engine, dialect: str, denied: str, sql: str, stats: Counter[str]
) -> None:
    """Both properties of the module docstring for one query, on a source that tells
    which columns a query binds by refusing a reader without the privilege (`denied`)."""
    everything = catalog(engine.schema, hide=False)
    hidden = catalog(engine.schema, hide=True)
    in_order = ordered(sql)
    sql = limited(sql)
    direct = engine.run(sql, in_order=in_order)
    try:
        text, params = compile_for(sql, everything, dialect)
    except QueryRejected:
        supported = False
        stats["unsupported"] += 1
    else:
        supported = True
        compiled = engine.run(text, params, in_order=in_order)
        if direct.ok:
            assert compiled == direct or (
                in_order and ordered_alike(engine, dialect, text, params, direct)
            ), f"everything selected, other rows: {sql}\n{text}"
            stats["same rows, everything selected"] += 1
        else:
            assert not compiled.ok, f"the source refuses {sql} ({direct.error}); ran: {text}"
    # The source's own binding: run as a reader of the selected columns only.
    as_reader = engine.run(sql, in_order=in_order, as_reader=True)
    try:
        text, params = compile_for(sql, hidden, dialect)
    except QueryRejected as refusal:
        assert not as_reader.ok or not supported, (
            f"refused ({refusal}) although the source binds no hidden column: {sql}"
        )
        if as_reader.error == denied:
            stats["refused, binds a hidden column"] += 1
        return
    assert as_reader.error != denied, (
        f"accepted although the source binds a hidden column: {sql}\n{text}"
    )
    compiled = engine.run(text, params, in_order=in_order, as_reader=True)
    assert compiled.error != denied, f"the compiled query reads a hidden column: {text}"
    if as_reader.ok:
        assert compiled == as_reader or (
            in_order and ordered_alike(engine, dialect, text, params, as_reader, as_reader=True)
        ), f"hidden unselected, other rows: {sql}\n{text}"
        stats["same rows, hidden unselected"] += 1
    else:
        assert not compiled.ok, f"the source refuses {sql} ({as_reader.error}); ran: {text}"


def test_generated_queries_bind_as_postgresql_does(pg: Postgres) -> None:
    stats: Counter[str] = Counter()

    @PROPERTY
    @given(queries())
    def property_holds(sql: str) -> None:
        check_with_privileges(pg, "postgres", "42501", sql, stats)

    property_holds()
    not_vacuous(stats)


# -- DuckDB (embedded) ----------------------------------------------------------------------


HIDDEN_READ = "fabric hidden column read"


class DuckDB:
    """The tables in `full` as they are, in `visible` without the hidden columns, and in
    `poisoned` as views whose hidden columns raise HIDDEN_READ when a row's is read."""

    full = "names_full"
    visible = "names_visible"
    poisoned = "names_poisoned"

    def __init__(self) -> None:
        self.connection = duckdb.connect()
        for schema, hide in ((self.full, False), (self.visible, True)):
            self.connection.execute(f"CREATE SCHEMA {schema}")
            for table, columns in PHYSICAL.items():
                kept = [i for i, c in enumerate(columns) if not hide or c in SELECTED[table]]
                names = ", ".join(f"{columns[i]} INTEGER" for i in kept)
                self.connection.execute(f"CREATE TABLE {schema}.{table} ({names})")
                marks = ", ".join(["?"] * len(kept))
                self.connection.executemany(
                    f"INSERT INTO {schema}.{table} VALUES ({marks})",
                    [[row[i] for i in kept] for row in ROWS[table]],
                )
        self.connection.execute(f"CREATE SCHEMA {self.poisoned}")
        for table, columns in PHYSICAL.items():
            items = ", ".join(
                c
                if c in SELECTED[table]
                else f"{c} + CAST(error('{HIDDEN_READ}') AS INTEGER) AS {c}"
                for c in columns
            )
            self.connection.execute(
                f"CREATE VIEW {self.poisoned}.{table} AS SELECT {items} FROM {self.full}.{table}"
            )

    def run(
        self, sql: str, params: tuple[Any, ...] = (), *, in_order: bool, schema: str = full
    ) -> Outcome:
        try:
            self.connection.execute(f"SET search_path = '{schema}'")
            rows = self.connection.execute(sql, list(params)).fetchall()
            return Outcome(canonical(rows, in_order))
        except duckdb.Error as error:
            return Outcome(None, "hidden" if HIDDEN_READ in str(error) else type(error).__name__)


@pytest.fixture(scope="module")
def duck() -> Iterator[DuckDB]:
    made = DuckDB()
    try:
        yield made
    finally:
        made.connection.close()


def check_duckdb(duck: DuckDB, sql: str, stats: Counter[str]) -> None:
    """Both properties for one query on DuckDB; the source's binding touches a hidden
    column when the query reads one (the poisoned views raise) or gives another answer
    (or fails) without them."""
    everything = catalog(duck.full, hide=False)
    hidden = catalog(duck.full, hide=True)
    in_order = ordered(sql)
    sql = limited(sql)
    direct = duck.run(sql, in_order=in_order)
    try:
        text, params = compile_for(sql, everything, "duckdb")
    except QueryRejected:
        supported = False
        stats["unsupported"] += 1
    else:
        supported = True
        compiled = duck.run(text, params, in_order=in_order)
        if direct.ok:
            assert compiled == direct, f"everything selected, other rows: {sql}\n{text}"
            stats["same rows, everything selected"] += 1
        else:
            assert not compiled.ok, f"DuckDB refuses {sql} ({direct.error}); ran: {text}"
    without_hidden = duck.run(sql, in_order=in_order, schema=duck.visible)
    poisoned = duck.run(sql, in_order=in_order, schema=duck.poisoned)
    touches_hidden = poisoned.error == "hidden" or without_hidden != direct
    try:
        text, params = compile_for(sql, hidden, "duckdb")
    except QueryRejected as refusal:
        assert touches_hidden or not direct.ok or not supported, (
            f"refused ({refusal}) although DuckDB binds no hidden column: {sql}"
        )
        if touches_hidden and direct.ok:
            stats["refused, binds a hidden column"] += 1
        return
    assert not touches_hidden, f"accepted although DuckDB binds a hidden column: {sql}\n{text}"
    compiled = duck.run(text, params, in_order=in_order)
    if direct.ok:
        assert compiled == direct, f"hidden unselected, other rows: {sql}\n{text}"
        stats["same rows, hidden unselected"] += 1
    else:
        assert not compiled.ok, f"DuckDB refuses {sql} ({direct.error}); ran: {text}"


def test_generated_queries_bind_as_duckdb_does(duck: DuckDB) -> None:
    stats: Counter[str] = Counter()

    @PROPERTY
    @given(queries())
    def property_holds(sql: str) -> None:
        check_duckdb(duck, sql, stats)

    property_holds()
    not_vacuous(stats)


# -- MariaDB ----------------------------------------------------------------------------------


class MariaDB:
    """The tables in a private database; `owner` is the test's admin, `reader` a user
    with SELECT on the selected columns only (MariaDB checks it as it binds names)."""

    def __init__(self, url: str) -> None:
        import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

        self._error = pymysql.Error
        tag = uuid.uuid4().hex[:10]
        self.schema = f"fabric_names_{tag}"
        self.user = f"fabric_names_{tag}"
        u = urlparse(url)
        where = {"host": u.hostname or "127.0.0.1", "port": u.port or 3306}
        self.owner = pymysql.connect(
            **where,
            user=unquote(u.username or "root"),
            password=unquote(u.password or ""),
            autocommit=True,
        )
        with self.owner.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.schema}")
            cur.execute(f"CREATE USER '{self.user}'@'%'")
            for table, columns in PHYSICAL.items():
                names = ", ".join(f"{c} INT" for c in columns)
                cur.execute(f"CREATE TABLE {self.schema}.{table} ({names})")
                marks = ", ".join(["%s"] * len(columns))
                cur.executemany(f"INSERT INTO {self.schema}.{table} VALUES ({marks})", ROWS[table])
                visible = ", ".join(SELECTED[table])
                cur.execute(
                    f"GRANT SELECT ({visible}) ON {self.schema}.{table} TO '{self.user}'@'%'"
                )
        self.reader = pymysql.connect(**where, user=self.user, password="", autocommit=True)
        for connection in (self.owner, self.reader):
            with connection.cursor() as cur:
                cur.execute(f"USE {self.schema}")
                # Deterministic answers: no ungrouped column may pick an arbitrary row.
                cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ONLY_FULL_GROUP_BY')")
                cur.execute("SET SESSION max_statement_time = 5")

    def run(
        self, sql: str, params: tuple[Any, ...] = (), *, in_order: bool, as_reader: bool = False
    ) -> Outcome:
        connection = self.reader if as_reader else self.owner
        try:
            with connection.cursor() as cur:
                cur.execute(sql, params)
                return Outcome(canonical(list(cur.fetchall()), in_order))
        except self._error as error:
            return Outcome(None, str(error.args[0]) if error.args else type(error).__name__)

    def close(self) -> None:
        self.reader.close()
        with self.owner.cursor() as cur:
            cur.execute(f"DROP DATABASE {self.schema}")
            cur.execute(f"DROP USER '{self.user}'@'%'")
        self.owner.close()


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDB]:
    made = MariaDB(mariadb_url())
    try:
        yield made
    finally:
        made.close()


COLUMN_ACCESS_DENIED = "1143"


def test_generated_queries_bind_as_mariadb_does(maria: MariaDB) -> None:
    stats: Counter[str] = Counter()

    @PROPERTY
    @given(queries())
    def property_holds(sql: str) -> None:
        check_with_privileges(maria, "mysql", COLUMN_ACCESS_DENIED, sql, stats)

    property_holds()
    not_vacuous(stats)


# -- targeted cases, per dialect, checked against each engine ----------------------------------

ACCEPT, REFUSE = "accept", "refuse"
ALL = ("postgres", "duckdb", "mysql")


def expect(outcome: str, *dialects: str, **others: str) -> dict[str, str]:
    found = dict.fromkeys(dialects or ALL, outcome)
    found.update(others)
    return found


TARGETED: list[tuple[str, str, dict[str, str]]] = [
    (
        "the issue: an inner table's hidden column, an outer alias of the same name",
        "SELECT (SELECT max(x) FROM t1 WHERE t1.id > 0) AS m FROM (SELECT c AS x FROM t2) AS s",
        expect(REFUSE),
    ),
    (
        "correlated name hidden in the inner table, visible in the outer one",
        "SELECT id FROM t3 WHERE EXISTS (SELECT 1 FROM t1 WHERE x = 201)",
        expect(REFUSE),
    ),
    (
        "correlated name the inner table lacks binds outward",
        "SELECT id FROM t3 WHERE EXISTS (SELECT 1 FROM t2 WHERE x = 41)",
        expect(ACCEPT),
    ),
    (
        "GROUP BY an alias named like a hidden input column",
        "SELECT a AS h, count(*) AS n FROM t1 GROUP BY h",
        expect(REFUSE),
    ),
    (
        "GROUP BY an alias no input column has",
        "SELECT a AS y, count(*) AS n FROM t1 GROUP BY y",
        expect(ACCEPT),
    ),
    (
        "ORDER BY an alias named like a hidden column: the output wins",
        "SELECT a AS h FROM t1 ORDER BY h",
        expect(ACCEPT),
    ),
    (
        "ORDER BY an expression of an alias named like a hidden column: the input wins",
        "SELECT a AS h FROM t1 ORDER BY h + 0",
        expect(REFUSE),
    ),
    (
        "ORDER BY an expression of an alias",
        "SELECT a AS y FROM t1 ORDER BY y + 0",
        expect(ACCEPT, "duckdb", "mysql", postgres=REFUSE),
    ),
    (
        "HAVING an alias",
        "SELECT a AS y, count(*) AS n FROM t1 GROUP BY a HAVING y > 0",
        expect(ACCEPT, "duckdb", "mysql", postgres=REFUSE),
    ),
    (
        "HAVING an alias named like a hidden column",
        "SELECT a AS h, count(*) AS n FROM t1 GROUP BY a HAVING h > 0",
        expect(REFUSE),
    ),
    (
        "WHERE an alias",
        "SELECT a AS y FROM t1 WHERE y > 0",
        expect(REFUSE, "postgres", "mysql", duckdb=ACCEPT),
    ),
    (
        "WHERE an alias named like a hidden column: the input wins",
        "SELECT a AS h FROM t1 WHERE h > 0",
        expect(REFUSE),
    ),
    (
        "a subquery naming an output of the enclosing query",
        "SELECT a AS y, (SELECT max(c) FROM t2 WHERE c > y) AS m FROM t1",
        expect(REFUSE),
    ),
    (
        "a derived table's * passes over a hidden column a subquery names",
        "SELECT (SELECT max(x) FROM (SELECT * FROM t1) AS d) AS m FROM t3",
        expect(REFUSE),
    ),
    (
        "a CTE's * passes over a hidden column a correlated subquery names",
        "WITH w AS (SELECT * FROM t2) SELECT id FROM t3 WHERE EXISTS "
        "(SELECT 1 FROM w WHERE h = 301)",
        expect(REFUSE),
    ),
    (
        "an ON clause sees only the tables joined before it",
        "SELECT t2.id FROM t2 JOIN t1 ON x = 201 JOIN t3 ON t3.id = t2.id",
        expect(REFUSE),
    ),
    (
        "an ON clause name only an earlier table has",
        "SELECT t3.id FROM t3 JOIN t2 ON x = t2.c - 1 JOIN t1 ON t1.id = t3.id",
        expect(ACCEPT),
    ),
    (
        "ORDER BY the name PostgreSQL gives an unaliased aggregate",
        "SELECT count(*) FROM t1 ORDER BY count",
        expect(REFUSE, "duckdb", "mysql", postgres=ACCEPT),
    ),
    (
        "a table alias named like a hidden column and a correlated reference",
        "SELECT x.id FROM t3 AS x WHERE x.c IN (SELECT c FROM t2 WHERE h > 0)",
        expect(REFUSE),
    ),
    (
        "an unaliased output of a derived table PostgreSQL names like an outer column",
        "SELECT (SELECT max(b) FROM (SELECT CAST(b AS int) FROM t1) AS d) AS m FROM t3",
        expect(REFUSE),
    ),
]


def _outcome(sql: str, snapshot: CatalogSnapshot, dialect: str) -> str:
    try:
        compile_for(sql, snapshot, dialect)
    except QueryRejected:
        return REFUSE
    return ACCEPT


def _targeted(dialect: str) -> list[Any]:
    return [
        pytest.param(sql, outcomes[dialect], id=name.replace(" ", "-")[:60])
        for name, sql, outcomes in TARGETED
        if dialect in outcomes
    ]


@pytest.mark.parametrize(("sql", "outcome"), _targeted("postgres"))
def test_targeted_cases_on_postgres(pg: Postgres, sql: str, outcome: str) -> None:
    assert _outcome(sql, catalog(pg.schema, hide=True), "postgres") == outcome
    check_with_privileges(pg, "postgres", "42501", sql, Counter())


@pytest.mark.parametrize(("sql", "outcome"), _targeted("mysql"))
def test_targeted_cases_on_mariadb(maria: MariaDB, sql: str, outcome: str) -> None:
    assert _outcome(sql, catalog(maria.schema, hide=True), "mysql") == outcome
    check_with_privileges(maria, "mysql", COLUMN_ACCESS_DENIED, sql, Counter())


@pytest.mark.parametrize(("sql", "outcome"), _targeted("duckdb"))
def test_targeted_cases_on_duckdb(duck: DuckDB, sql: str, outcome: str) -> None:
    assert _outcome(sql, catalog(duck.full, hide=True), "duckdb") == outcome
    check_duckdb(duck, sql, Counter())
