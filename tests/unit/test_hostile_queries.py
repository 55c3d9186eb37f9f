"""Hostile query texts: refused before the parser runs, at a cost bounded by the text's
size; failure logs and error messages stay bounded and free of the query's literals."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from sqlglot.dialects.dialect import Dialect
from sqlglot.parser import Parser

from connectors.base import ParamStyle
from fabric.api.status import status_for
from fabric.config import Settings
from fabric.errors import MAX_MESSAGE_LENGTH, FabricError, NotFound, QueryRejected
from fabric.observability import logging as fabric_logging
from fabric.query import engine as engine_module
from fabric.query.compiler import QueryLimits, StatementCompiler
from tests.unit.test_compiler_golden import sales_catalog
from tests.unit.test_query_engine import Rig, collect, make_rig, query, run

SECRET = "secret_literal_5d1e"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of sqlglot's parser (the real one runs)."""
    calls: list[int] = []
    real = Parser.parse

    def counting(self: Parser, raw_tokens: Any, sql: str = "") -> Any:
        calls.append(len(raw_tokens))
        return real(self, raw_tokens, sql)

    monkeypatch.setattr(Parser, "parse", counting)
    return calls


def compile_sql(sql: str, compiler: StatementCompiler | None = None) -> None:
    (compiler or StatementCompiler()).compile(
        sql, sales_catalog(), dialect="postgres", param_style=ParamStyle.FORMAT, max_rows=10
    )


def _ctes(count: int) -> str:
    """A chain of CTEs, each reading the one before."""
    links = [f"c{i} AS (SELECT id FROM c{i - 1})" for i in range(1, count)]
    chain = ", ".join(["c0 AS (SELECT id FROM orders)", *links])
    return f"WITH {chain} SELECT id FROM c{count - 1}"


# -- shape limits, checked on the tokens before the parser runs ----------------------------

HOSTILE_SHAPES = {
    "subscripts": ("SELECT id" + "[1]" * 2_000 + " FROM orders", "chains"),
    "casts": ("SELECT id" + "::int" * 200 + " FROM orders", "chains"),
    "collations": ("SELECT status" + ' COLLATE "C"' * 200 + " FROM orders", "chains"),
    "json-path": ("SELECT status" + " -> 'a'" * 200 + " FROM orders", "chains"),
    "ctes": (_ctes(2_000), "CTEs"),
    "unions": (" UNION ALL ".join(["SELECT id FROM orders"] * 500), "set-operation"),
    "case-arms": (
        "SELECT CASE " + " ".join(f"WHEN id = {i} THEN {i}" for i in range(500)) + " END "
        "FROM orders",
        "arms in one CASE",
    ),
    "subqueries": ("SELECT " + ", ".join(["(SELECT 1)"] * 500) + " FROM orders", "subqueries"),
    "joins": (
        "SELECT o0.id FROM orders o0"
        + "".join(f" JOIN orders o{i} ON o{i}.id = o0.id" for i in range(1, 500)),
        "joins",
    ),
}


@pytest.mark.parametrize(("sql", "named"), HOSTILE_SHAPES.values(), ids=HOSTILE_SHAPES.keys())
def test_hostile_shapes_are_refused_before_the_parser_runs(
    parses: list[int], sql: str, named: str
) -> None:
    with pytest.raises(QueryRejected, match=named) as caught:
        compile_sql(sql)
    assert parses == [], "the parser must not see a text the token checks refuse"
    assert "limit is" in caught.value.message and len(caught.value.message) < 200


def test_too_many_tokens_are_refused_before_the_parser_runs(parses: list[int]) -> None:
    compiler = StatementCompiler(QueryLimits(max_tokens=1_000))
    sql = "SELECT id FROM orders WHERE " + " OR ".join(f"id = {i}" for i in range(300))
    with pytest.raises(QueryRejected, match="more than 1000 tokens"):
        compile_sql(sql, compiler)
    assert parses == []


def test_shapes_within_the_limits_still_compile(parses: list[int]) -> None:
    compile_sql("SELECT id" + "::int" * 3 + " FROM orders")
    compile_sql(_ctes(50))
    compile_sql(" UNION ALL ".join(["SELECT id FROM orders"] * 50))
    compile_sql("SELECT id FROM orders WHERE " + " OR ".join(f"id = {i}" for i in range(2000)))
    assert len(parses) == 4


def test_limits_come_from_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({"FABRIC_MAX_QUERY_CHAIN": "2", "FABRIC_MAX_QUERY_PARTS": "3"})
    assert (settings.max_query_chain, settings.max_query_parts) == (2, 3)
    with make_rig(tmp_path, max_query_chain=2) as rig:
        assert rig.engine.statements.compiler.limits.max_chain == 2
        with pytest.raises(QueryRejected, match="the limit is 2"):
            run(collect(rig.engine, query("SELECT id::int::int::int FROM orders")))


# -- over-long text: refused before any other work -----------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as made:
        yield made


def test_over_long_text_is_refused_before_the_connection_is_resolved(rig: Rig) -> None:
    sql = "SELECT id FROM orders WHERE note = '" + "x" * 200_000 + "'"
    with pytest.raises(QueryRejected, match="longer than 100000 characters") as caught:
        run(collect(rig.engine, engine_module.QueryRequest("no-such-connection", sql)))
    assert "xxx" not in caught.value.message
    with pytest.raises(NotFound):
        run(collect(rig.engine, engine_module.QueryRequest("no-such-connection", "SELECT 1")))


def test_a_failure_log_line_the_level_drops_costs_no_masking(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    masked: list[int] = []

    def counting(sql: str) -> str:
        masked.append(len(sql))
        return fabric_logging.mask_literals(sql)

    monkeypatch.setattr(engine_module, "mask_literals", counting)
    caplog.set_level(logging.WARNING, logger=engine_module.__name__)
    with pytest.raises(QueryRejected):
        run(collect(rig.engine, query("SELECT payroll.salary FROM payroll")))
    assert masked == [] and not caplog.records
    caplog.set_level(logging.INFO, logger=engine_module.__name__)
    with pytest.raises(QueryRejected):
        run(collect(rig.engine, query("SELECT payroll.salary FROM payroll")))
    assert masked == [len("SELECT payroll.salary FROM payroll")]


def test_masking_reads_only_the_part_that_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenized: list[int] = []
    real = Dialect.tokenize

    def counting(self: Dialect, sql: str, **options: Any) -> Any:
        tokenized.append(len(sql))
        return real(self, sql, **options)

    monkeypatch.setattr(Dialect, "tokenize", counting)
    sql = "SELECT id FROM t WHERE a IN (" + ", ".join(["'v'"] * 500_000) + ")"
    logged = fabric_logging.mask_literals(sql)
    assert tokenized and max(tokenized) <= fabric_logging.MAX_LOGGED_SQL
    assert logged.startswith("SELECT id FROM t WHERE a IN (?, ?")
    assert "'v'" not in logged and len(logged) <= fabric_logging.MAX_LOGGED_SQL


def test_a_cut_that_opens_a_literal_still_masks_it() -> None:
    sql = "SELECT id FROM t WHERE a = '" + SECRET * 1_000 + "'"
    assert SECRET not in fabric_logging.mask_literals(sql)


def test_a_failure_log_line_is_bounded(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=engine_module.__name__)
    params = {f"p{i}_{'n' * 500}": i for i in range(1_000)}
    with pytest.raises(FabricError):
        run(collect(rig.engine, engine_module.QueryRequest("c" * 10_000, "SELECT 1", params)))
    (record,) = [r for r in caplog.records if r.getMessage().startswith("query failed")]
    assert len(record.__dict__["connection"]) <= fabric_logging.MAX_LOGGED_NAME
    assert len(record.__dict__["params"]) <= fabric_logging.MAX_LOGGED_PARAMS
    assert len(record.getMessage()) <= MAX_MESSAGE_LENGTH + 20


# -- messages name constructs, never literals, and are bounded -----------------------------


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT status COLLATE '{SECRET}' FROM orders",
        f"SELECT CAST(status AS varchar('{SECRET}')) FROM orders",
        f"SELECT status::enum('{SECRET}') FROM orders",
        f"SELECT log('{SECRET}', amount) FROM orders",
        f"SELECT FROM orders WHERE '{SECRET}'",
        f"SELECT id FROM orders WHERE status = '{SECRET}' ORDER BY",
        f"'{SECRET}' SELECT 1",
        f"E'{SECRET}'",
        f"$${SECRET}$$ FROM orders",
    ],
    ids=[
        "collate",
        "varchar-arg",
        "enum",
        "log-base",
        "syntax",
        "syntax-end",
        "first-string",
        "first-escape-string",
        "first-dollar-string",
    ],
)
def test_rejection_messages_never_carry_a_literal(sql: str) -> None:
    for dialect in ("postgres", "mysql", "tsql", "duckdb"):
        try:
            StatementCompiler().compile(
                sql, sales_catalog(), dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=10
            )
        except QueryRejected as error:
            assert SECRET not in error.message.lower(), (dialect, error.message)


def test_every_error_message_is_bounded() -> None:
    error = NotFound(f"connection '{'c' * 10_000}' not found")
    assert len(error.message) == MAX_MESSAGE_LENGTH and error.message.endswith("...")
    assert str(error) == error.message
    assert NotFound("short").message == "short"


def test_a_long_text_compiles_off_the_event_loop(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = rig.engine.statements.compiler
    threads: list[str] = []
    real = compiler.compile

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler, "compile", recording)
    short = "SELECT salary FROM payroll"
    long = short + " WHERE " + " OR ".join(f"id = {i}" for i in range(300))
    assert len(short) <= engine_module.INLINE_COMPILE_LENGTH < len(long)
    for sql in (short, long):
        with pytest.raises(QueryRejected, match="payroll"):
            run(collect(rig.engine, query(sql)))
    assert threads[0] == threading.main_thread().name
    assert threads[1].startswith("fabric-compile")


# -- scope tricks: a name means what the source would make it mean --------------------------
#
# The sales catalog hides customers.ssn and orders.secret. Each trick names a hidden
# column where another binding (an outer table, an output alias, a derived table's
# column) has the same name; the source binds the innermost one, the hidden column, so
# the compiler must refuse, in every dialect, with the message an unknown name gets.

HIDDEN = "is not selected"
SCOPE_TRICKS: dict[str, str] = {
    "scalar subquery, outer alias": "SELECT (SELECT max(secret) FROM orders WHERE orders.id > 0) "
    "FROM (SELECT amount AS secret FROM orders) s",
    "exists, outer alias": "SELECT s.secret FROM (SELECT status AS secret FROM orders) s "
    "WHERE EXISTS (SELECT 1 FROM orders WHERE secret = 'x')",
    "in, outer alias": "SELECT x.ssn FROM (SELECT region AS ssn FROM customers) x "
    "WHERE x.ssn IN (SELECT ssn FROM customers)",
    "group by alias": "SELECT region AS ssn, count(*) FROM customers GROUP BY ssn",
    "order by expression of alias": "SELECT region AS ssn FROM customers ORDER BY ssn || ''",
    "having alias": "SELECT region AS ssn, count(*) FROM customers GROUP BY region "
    "HAVING ssn <> ''",
    "where alias": "SELECT region AS ssn FROM customers WHERE ssn = 'x'",
    "select-list alias": "SELECT region AS ssn, ssn FROM customers",
    "derived star passes over": "SELECT (SELECT max(ssn) FROM (SELECT * FROM customers) d) "
    "FROM (SELECT region AS ssn FROM customers) s",
    "cte star passes over": "WITH c AS (SELECT * FROM customers) SELECT (SELECT count(*) "
    "FROM c WHERE ssn IS NULL) FROM (SELECT name AS ssn FROM customers) o",
    "on clause before the join": "SELECT o.id FROM orders o JOIN customers c ON secret = c.id "
    "JOIN (SELECT id AS secret FROM products) p ON p.secret = o.id",
    "table alias named like the column": "SELECT ssn.id FROM customers ssn WHERE ssn.ssn IS NULL",
    "window over alias": "SELECT region AS ssn, rank() OVER (ORDER BY ssn) FROM customers",
    "nested twice": "SELECT (SELECT (SELECT max(secret) FROM orders) FROM customers LIMIT 1) "
    "FROM (SELECT status AS secret FROM orders) s",
}


@pytest.mark.parametrize("sql", SCOPE_TRICKS.values(), ids=SCOPE_TRICKS.keys())
@pytest.mark.parametrize("dialect", ["duckdb", "mysql", "postgres", "tsql"])
def test_a_scope_trick_reaching_a_hidden_column_is_refused(sql: str, dialect: str) -> None:
    with pytest.raises(QueryRejected) as caught:
        StatementCompiler().compile(
            sql, sales_catalog(), dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=10
        )
    assert status_for(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert HIDDEN in caught.value.message, caught.value.message


# Where each dialect reads a name as an output alias (so the compiler binds it there)
# and where it does not (so the compiler refuses, as the source would).
DIALECT_TRICKS: list[tuple[str, dict[str, bool]]] = [
    # ORDER BY item: the output first, everywhere that reads output names there.
    (
        "SELECT region AS ssn FROM customers ORDER BY ssn",
        {"postgres": True, "duckdb": True, "mysql": True, "tsql": False},
    ),
    # An alias in WHERE: DuckDB reads it (when no column has the name), others never.
    (
        "SELECT region AS place FROM customers WHERE place = 'north'",
        {"postgres": False, "duckdb": True, "mysql": False, "tsql": False},
    ),
    # An alias in HAVING: MySQL and DuckDB read it.
    (
        "SELECT region AS place, count(*) FROM customers GROUP BY region HAVING place <> ''",
        {"postgres": False, "duckdb": True, "mysql": True, "tsql": False},
    ),
    # An output of the enclosing query, read by MySQL and DuckDB: the compiler does not.
    (
        "SELECT amount AS total, (SELECT count(*) FROM order_items WHERE price > total) "
        "FROM orders",
        {"postgres": False, "duckdb": False, "mysql": False, "tsql": False},
    ),
]


@pytest.mark.parametrize(("sql", "accepted"), DIALECT_TRICKS)
def test_output_names_are_read_where_each_dialect_reads_them(
    sql: str, accepted: dict[str, bool]
) -> None:
    for dialect, expected in accepted.items():
        try:
            StatementCompiler().compile(
                sql, sales_catalog(), dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=10
            )
        except QueryRejected:
            assert not expected, f"{dialect} reads this query; the compiler refused it"
        else:
            assert expected, f"{dialect} does not read this query so; the compiler accepted it"


@pytest.mark.parametrize(
    ("hidden", "unknown"),
    [
        ("SELECT id FROM orders WHERE secret = 'x'", "SELECT id FROM orders WHERE nope = 'x'"),
        (
            "SELECT status AS secret FROM orders WHERE secret = 'x'",
            "SELECT status AS nope FROM orders WHERE nope = 'x'",
        ),
        ("SELECT o.secret FROM orders o", "SELECT o.nope FROM orders o"),
        (
            "SELECT d.secret FROM (SELECT * FROM orders) d",
            "SELECT d.nope FROM (SELECT * FROM orders) d",
        ),
        (
            "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE secret = 1)",
            "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE nope = 1)",
        ),
    ],
)
def test_a_hidden_column_is_refused_as_a_name_no_table_has(hidden: str, unknown: str) -> None:
    messages = []
    for sql in (hidden, unknown):
        with pytest.raises(QueryRejected) as caught:
            compile_sql(sql)
        messages.append(caught.value.message.replace("secret", "NAME").replace("nope", "NAME"))
    assert messages[0] == messages[1]


def test_an_entity_whose_hidden_columns_are_not_known_is_bound_only_where_safe() -> None:
    snapshot = sales_catalog()
    entities = dict(snapshot.entities)
    entities["orders"] = replace(entities["orders"], hidden_columns=None)
    old = replace(snapshot, entities=entities)

    def compile_old(sql: str) -> None:
        StatementCompiler().compile(
            sql, old, dialect="postgres", param_style=ParamStyle.FORMAT, max_rows=10
        )

    compile_old("SELECT o.amount FROM orders o WHERE o.status = 'paid'")
    compile_old("SELECT amount FROM orders")
    # A name orders does not select may be one it hides: no binding outward, no alias.
    for sql in (
        "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM orders WHERE region = 'x')",
        "SELECT status AS bucket, count(*) FROM orders GROUP BY bucket",
    ):
        with pytest.raises(QueryRejected, match="refresh the connection's catalog"):
            compile_old(sql)


def test_scope_tricks_never_reach_the_source(rig: Rig) -> None:
    # The rig selects orders' id and amount; its note column is hidden.
    rig.source.answer(pa.table({"id": pa.array([1], pa.int64())}))
    for sql in (
        "SELECT (SELECT max(note) FROM orders) FROM (SELECT amount AS note FROM orders) s",
        "SELECT amount AS note, count(*) FROM orders GROUP BY note",
        "SELECT amount AS note FROM orders WHERE note = 'x'",
        "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM orders WHERE note = 'n1')",
    ):
        with pytest.raises(QueryRejected, match="is not selected") as caught:
            run(collect(rig.engine, query(sql)))
        assert status_for(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert rig.source.executions == []
    # The same shapes over a name no table hides bind outward or to the alias, and run.
    run(collect(rig.engine, query("SELECT amount AS total FROM orders WHERE total > 1")))
    assert len(rig.source.executions) == 1
