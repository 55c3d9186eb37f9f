"""Hostile query texts: refused before the parser runs, at a cost bounded by the text's
size; failure logs and error messages stay bounded and free of the query's literals."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlglot.dialects.dialect import Dialect
from sqlglot.parser import Parser

from connectors.base import ParamStyle
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


LITERAL_QUERIES = {
    "collate": f"SELECT status COLLATE '{SECRET}' FROM orders",
    "varchar-arg": f"SELECT CAST(status AS varchar('{SECRET}')) FROM orders",
    "enum": f"SELECT status::enum('{SECRET}') FROM orders",
    "log-base": f"SELECT log('{SECRET}', amount) FROM orders",
    "syntax": f"SELECT FROM orders WHERE '{SECRET}'",
    "syntax-end": f"SELECT id FROM orders WHERE status = '{SECRET}' ORDER BY",
    "first-string": f"'{SECRET}' SELECT 1",
    "first-escape-string": f"E'{SECRET}'",
    "first-dollar-string": f"$${SECRET}$$ FROM orders",
}
"""Refused texts whose literals must not come back in the message."""


@pytest.mark.parametrize("sql", LITERAL_QUERIES.values(), ids=LITERAL_QUERIES.keys())
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
