"""Hostile query texts: refused before the parser runs, at a cost bounded by the text's
size; failure logs and error messages stay bounded and free of the query's literals;
NUL refused wherever it is; every construct that can multiply a value's size refused or
bounded per dialect; names folded and measured as each source does."""

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

from connectors import registry
from connectors.base import ParamStyle
from fabric.api.status import status_for
from fabric.config import Settings
from fabric.errors import (
    MAX_MESSAGE_LENGTH,
    FabricError,
    InvalidArgument,
    NotFound,
    QueryRejected,
)
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.observability import logging as fabric_logging
from fabric.query import engine as engine_module
from fabric.query.compiler import CompiledStatement, QueryLimits, StatementCompiler
from tests.unit.test_compiler_golden import sales_catalog
from tests.unit.test_query_engine import CTX, Rig, collect, make_rig, query, run

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


# -- NUL: refused anywhere in the text, with its position, before the parser runs ----------

DIALECTS = registry.dialects()
STYLES = {spec.dialect: spec.param_style for spec in reversed(registry.specs())}

NUL_TEXTS = {
    "string-literal": "SELECT id FROM orders WHERE status = 'paid\x00' OR status = 'x'",
    "quoted-name": 'SELECT "id\x00" FROM orders',
    "line-comment": "SELECT id FROM orders -- note\x00\nWHERE id = 1",
    "block-comment": "SELECT id /* \x00 */ FROM orders",
    "escape-string": "SELECT id FROM orders WHERE status = E'a\x00b'",
    "dollar-string": "SELECT id FROM orders WHERE status = $$a\x00$$",
    "between-tokens": "SELECT id FROM\x00orders",
    "after-the-statement": "SELECT id FROM orders;\x00",
    "second-line": "SELECT id\nFROM orders\nWHERE status = 'a\x00'",
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", NUL_TEXTS.values(), ids=NUL_TEXTS.keys())
def test_a_nul_anywhere_in_the_text_is_refused_with_its_position(
    parses: list[int], sql: str, dialect: str
) -> None:
    position = sql.index("\x00")
    line = sql.count("\n", 0, position) + 1
    column = position - (sql.rfind("\n", 0, position) + 1) + 1
    with pytest.raises(QueryRejected) as caught:
        compile_for(sql, dialect)
    message = caught.value.message
    assert f"NUL character (U+0000) at position {position + 1}" in message
    assert f"(line {line}, column {column})" in message
    assert "\x00" not in message and "paid" not in message
    assert parses == []


def compile_for(
    sql: str,
    dialect: str,
    catalog: CatalogSnapshot | None = None,
    compiler: StatementCompiler | None = None,
) -> CompiledStatement:
    return (compiler or StatementCompiler()).compile(
        sql,
        catalog or sales_catalog(),
        dialect=dialect,
        param_style=STYLES[dialect],
        max_rows=10,
    )


# -- resource bombs: every size-multiplying construct refused or bounded -------------------

SIZE_BOMBS = {
    "char-ten-million": ("SELECT CAST(status AS char(77777770)) FROM orders", "must be between"),
    "varchar-shorthand": ("SELECT status::character varying(999999) FROM orders", "between"),
    "nchar": ("SELECT CAST(status AS nchar(70000)) FROM orders", "must be between"),
    "varchar-max": ("SELECT CAST(status AS varchar(max)) FROM orders", "whole numbers"),
    "varchar-parameter": ("SELECT CAST(status AS varchar(:n)) FROM orders", "whole numbers"),
    "varchar-fraction": ("SELECT status::varchar(1.5) FROM orders", "whole numbers"),
    "numeric-precision": ("SELECT CAST(amount AS numeric(1001, 2)) FROM orders", "between"),
    "numeric-scale": ("SELECT CAST(amount AS numeric(10, 11)) FROM orders", "may not exceed"),
    "numeric-three": ("SELECT CAST(amount AS numeric(10, 2, 1)) FROM orders", "at most"),
    "timestamp-digits": ("SELECT CAST(ordered_at AS timestamp(9)) FROM orders", "between 0"),
    "float-precision": ("SELECT CAST(amount AS float(80)) FROM orders", "between 1 and 53"),
    "int-length": ("SELECT CAST(amount AS int(5)) FROM orders", "takes no parameters"),
    "repeat": ("SELECT repeat(status, 7777777) FROM orders", "repeats a value"),
    "space": ("SELECT space(7777777) FROM orders", "repeats a value"),
    "replicate": ("SELECT replicate(status, 7777777) FROM orders", "repeats a value"),
    "lpad": ("SELECT lpad(status, 7777777) FROM orders", "pads a value"),
    "rpad": ("SELECT rpad(status, 7777777, 'x') FROM orders", "pads a value"),
    "format-width": ("SELECT format('%7777777s', status) FROM orders", "pad a value"),
    "to-char": ("SELECT to_char(amount, '7777777') FROM orders", "pads a value"),
    "regexp-replace": ("SELECT regexp_replace(status, 'a', 'bb') FROM orders", "grow"),
    "generate-series": ("SELECT g FROM generate_series(1, 7777777000) g", "set of rows"),
    "unnest": ("SELECT unnest(:a) FROM orders", "set of rows"),
    "array-agg": ("SELECT array_agg(status) FROM orders", "grows with its rows"),
    "json-agg": ("SELECT json_agg(status) FROM orders", "grows with its rows"),
    "string-agg-uncut": ("SELECT string_agg(status, ',') FROM orders", "must be bounded"),
    "string-agg-window": (
        "SELECT left(string_agg(status, ',') OVER (ORDER BY id), 10) FROM orders",
        "window function",
    ),
    "string-agg-cut-too-long": (
        "SELECT left(string_agg(status, ','), 70000) FROM orders",
        "must be bounded",
    ),
    "string-agg-cut-by-parameter": (
        "SELECT left(string_agg(status, ','), :n) FROM orders",
        "must be bounded",
    ),
    "string-agg-cast": (
        "SELECT CAST(string_agg(status, ',') AS varchar(10)) FROM orders",
        "must be bounded",
    ),
    "replace-by-a-column": ("SELECT replace(status, 'a', status) FROM orders", "literals"),
    "replace-by-a-parameter": ("SELECT replace(status, :p, 'b') FROM orders", "literals"),
    "replace-chain": (
        "SELECT replace(replace(status, 'a', 'aaaaaaaa'), 'a', 'aaaaaaaa') FROM orders",
        "64 times longer",
    ),
    "replace-chain-through-a-function": (
        "SELECT replace(upper(replace(status, 'a', 'aaaaaaaa')), 'A', 'AAAAAAAA') FROM orders",
        "64 times longer",
    ),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("sql", "named"), SIZE_BOMBS.values(), ids=SIZE_BOMBS.keys())
def test_size_multiplying_constructs_are_refused_or_bounded(
    sql: str, named: str, dialect: str
) -> None:
    with pytest.raises(QueryRejected, match=named) as caught:
        compile_for(sql, dialect)
    assert "7777777" not in caught.value.message


BOUNDED = {
    "string-agg-cut": "SELECT left(string_agg(status, ','), 100) AS s FROM orders",
    "string-agg-filtered": (
        "SELECT left(string_agg(status, ',') FILTER (WHERE id > 1), 100) AS s FROM orders"
    ),
    "replace-growing-a-little": (
        "SELECT replace(replace(status, 'a', 'aaaa'), 'b', 'bbbb') AS s FROM orders"
    ),
    "replace-empty-pattern": "SELECT replace(status, '', 'xxxxxxxxxxxxxxxxxxxxxxxx') FROM orders",
    "char-within-every-range": "SELECT CAST(status AS char(4000)) AS s FROM orders",
    "numeric-within-every-range": "SELECT CAST(amount AS numeric(38, 10)) AS a FROM orders",
    "timestamp-digits": "SELECT CAST(ordered_at AS timestamp(6)) AS t FROM orders",
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", BOUNDED.values(), ids=BOUNDED.keys())
def test_bounded_forms_still_compile(sql: str, dialect: str) -> None:
    assert compile_for(sql, dialect).sql


PER_DIALECT_RANGES = [
    ("tsql", "SELECT CAST(status AS varchar(4001)) FROM orders", "between 1 and 4000 on tsql"),
    ("mysql", "SELECT CAST(amount AS numeric(66, 2)) FROM orders", "between 1 and 65 on mysql"),
    ("mysql", "SELECT CAST(amount AS numeric(40, 31)) FROM orders", "between 0 and 30 on mysql"),
    ("duckdb", "SELECT CAST(amount AS numeric(39, 2)) FROM orders", "between 1 and 38 on duckdb"),
    ("tsql", "SELECT CAST(amount AS numeric(39, 2)) FROM orders", "between 1 and 38 on tsql"),
    ("postgres", "SELECT CAST(ordered_at AS timestamp(7)) FROM orders", "between 0 and 6"),
    ("postgres", "SELECT CAST(status AS char(65536)) FROM orders", "65535 on this gateway"),
]


@pytest.mark.parametrize(("dialect", "sql", "named"), PER_DIALECT_RANGES)
def test_type_parameters_follow_each_targets_range(dialect: str, sql: str, named: str) -> None:
    with pytest.raises(QueryRejected, match=named):
        compile_for(sql, dialect)


def test_what_one_target_refuses_another_may_keep() -> None:
    assert compile_for("SELECT CAST(status AS varchar(4001)) AS s FROM orders", "postgres")
    assert compile_for("SELECT CAST(amount AS numeric(66, 2)) AS a FROM orders", "postgres")
    assert compile_for("SELECT CAST(ordered_at AS timestamp(7)) AS t FROM orders", "tsql")


def test_the_type_length_maximum_is_configurable() -> None:
    compiler = StatementCompiler(QueryLimits(max_type_length=10))
    assert compile_for(
        "SELECT CAST(status AS char(10)) AS s FROM orders", "postgres", None, compiler
    )
    for sql in (
        "SELECT CAST(status AS char(11)) AS s FROM orders",
        "SELECT left(string_agg(status, ','), 11) AS s FROM orders",
    ):
        with pytest.raises(QueryRejected, match="10"):
            compile_for(sql, "postgres", None, compiler)


def _doubled(inner: str, levels: int) -> str:
    """`inner` (a query with one output `v`) doubled at each of `levels` nested levels."""
    query = inner
    for level in range(levels):
        query = f"SELECT v || v AS v FROM ({query}) s{level}"
    return query


def _doubled_ctes(inner: str, levels: int) -> str:
    links = [f"c{i} AS (SELECT v || v AS v FROM c{i - 1})" for i in range(1, levels)]
    return f"WITH {', '.join([f'c0 AS ({inner})', *links])} SELECT v FROM c{levels - 1}"


ROW_BOMBS = {
    # what one output value holds of the source's values doubles at every level
    "nested-doubling": (_doubled("SELECT status AS v FROM orders", 9), "512 values read"),
    "cte-doubling": (_doubled_ctes("SELECT status AS v FROM orders", 10), "512 values read"),
    "wide-concatenation": (
        "SELECT " + " || ".join(["status"] * 300) + " AS v FROM orders",
        "300 values read",
    ),
    # what the query adds itself: literals, padding, copied through derived tables
    "nested-literal-doubling": (
        _doubled("SELECT 'abcdefgh' AS v FROM orders", 21),
        "16777216 bytes the query adds",
    ),
    "padded-copies": (
        "SELECT " + " || ".join(["p"] * 600) + " AS v "
        "FROM (SELECT CAST(status AS char(4000)) AS p FROM orders) s",
        "9600000 bytes the query adds",
    ),
    "padded-columns": (
        "SELECT "
        + ", ".join(f"CAST(status AS char(4000)) AS c{i}" for i in range(600))
        + " FROM orders",
        "9600000 bytes the query adds",
    ),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("sql", "named"), ROW_BOMBS.values(), ids=ROW_BOMBS.keys())
def test_a_row_the_query_itself_makes_too_wide_is_refused(
    sql: str, named: str, dialect: str
) -> None:
    with pytest.raises(QueryRejected, match=named):
        compile_for(sql, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_rows_of_ordinary_width_still_compile(dialect: str) -> None:
    assert compile_for(_doubled("SELECT status AS v FROM orders", 8), dialect)  # 256 values
    assert compile_for(
        "SELECT p || p AS v FROM (SELECT CAST(status AS char(4000)) AS p FROM orders) s",
        dialect,
    )


def test_parameters_copied_into_every_row_are_refused_past_the_row_limit() -> None:
    compiled = compile_for(
        "SELECT s.v || s.v AS w FROM (SELECT :p || :p AS v FROM orders) s", "postgres"
    )
    assert dict(compiled.row_params) == {"p": 4}
    assert compiled.bind({"p": "x" * 1000}) == ("x" * 1000, "x" * 1000)
    with pytest.raises(InvalidArgument, match="parameter 'p'") as caught:
        compiled.bind({"p": "y" * 3_000_000})  # 4 copies of up to 12 MB
    assert "yyy" not in caught.value.message
    # A parameter that is not shown in the rows (WHERE) adds nothing to them.
    where = compile_for("SELECT id FROM orders WHERE status = :p", "postgres")
    assert where.bind({"p": "z" * 3_000_000})


# -- names follow each source's rules -------------------------------------------------------

KELVIN = "\u212a"  # KELVIN SIGN: str.lower() makes it an ASCII "k"; PostgreSQL does not


def readings(*columns: str, entity: str = "readings") -> CatalogSnapshot:
    fields = tuple(ColumnInfo(name, "integer", pa.int64()) for name in ("id", *columns))
    return CatalogSnapshot(
        "acme",
        "lab",
        1,
        {entity: Entity(entity, "lab", entity, fields, ("id",), hidden_columns=())},
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unquoted_name_is_folded_in_ascii_only(dialect: str) -> None:
    only_k = readings("k")
    for sql in (f"SELECT {KELVIN} FROM readings", f'SELECT "{KELVIN}" FROM readings'):
        with pytest.raises(QueryRejected, match="not selected"):
            compile_for(sql, dialect, only_k)
    assert compile_for("SELECT K FROM readings", dialect, only_k).sql  # ASCII folds
    both = readings("k", KELVIN)
    compiled = compile_for(f"SELECT {KELVIN} AS v FROM readings", dialect, both)
    assert KELVIN in compiled.sql and '"k"' not in compiled.sql and "`k`" not in compiled.sql
    with pytest.raises(QueryRejected, match="not selected"):
        compile_for("SELECT \u00c9T\u00c9 FROM readings", dialect, readings("\u00e9t\u00e9"))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_entity_name_is_matched_in_ascii_only(dialect: str) -> None:
    catalog = readings(entity="kpis")
    assert compile_for("SELECT id FROM KPIS", dialect, catalog).sql
    with pytest.raises(QueryRejected, match="not selected"):
        compile_for(f"SELECT id FROM {KELVIN}pis", dialect, catalog)


def test_an_output_name_keeps_its_non_ascii_letters_as_postgresql_does() -> None:
    compiled = compile_for(
        f"SELECT id AS {KELVIN}elvin, id AS \u00c9t\u00e9 FROM orders", "postgres"
    )
    assert f'"{KELVIN}elvin"' in compiled.sql and '"\u00c9t\u00e9"' in compiled.sql


LONG_NAMES = {
    # (dialect, longest name, unit of the message)
    "postgres": (63, "bytes"),
    "mysql": (64, "characters"),
    "tsql": (128, "UTF-16 code units"),
}
LONG_NAME_PLACES = {
    "window-name": "SELECT sum(id) OVER {n} AS s FROM orders WINDOW {n} AS (ORDER BY id)",
    "column-reference": "SELECT {n} FROM orders",
    "qualifier": "SELECT {n}.id FROM orders o",
    "quoted-table-alias": 'SELECT "{n}".id FROM orders AS "{n}"',
    "cte-column-list": "WITH c ({n}) AS (SELECT id FROM orders) SELECT * FROM c",
    "group-by-reference": "SELECT count(*) AS c FROM orders GROUP BY {n}",
}


@pytest.mark.parametrize("dialect", sorted(LONG_NAMES))
@pytest.mark.parametrize("template", LONG_NAME_PLACES.values(), ids=LONG_NAME_PLACES.keys())
def test_a_name_longer_than_the_source_keeps_is_refused_wherever_it_is(
    dialect: str, template: str
) -> None:
    longest, unit = LONG_NAMES[dialect]
    with pytest.raises(QueryRejected, match=f"at most {longest} {unit} of a name"):
        compile_for(template.format(n="w" * (longest + 1)), dialect)


def test_postgres_measures_names_in_bytes_and_sql_server_in_utf16_units() -> None:
    two_bytes = "\u00e9" * 32  # 32 characters, 64 bytes
    with pytest.raises(QueryRejected, match="64 bytes long"):
        compile_for(f'SELECT id FROM orders AS "{two_bytes}"', "postgres")
    assert compile_for(f'SELECT id FROM orders AS "{two_bytes}"', "mysql")
    emoji = "\U0001f600"
    fits = emoji * 64  # 64 characters, 128 UTF-16 code units
    assert compile_for(f'SELECT id AS "{fits}" FROM orders', "tsql")
    with pytest.raises(QueryRejected, match="130 UTF-16 code units long"):
        compile_for(f'SELECT id AS "{fits}{emoji}" FROM orders', "tsql")


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT id AS "\U0001f600" FROM orders',
        'SELECT "\U0001f600".id FROM orders AS "\U0001f600"',
        'WITH "c\U0001f600" AS (SELECT id FROM orders) SELECT id FROM "c\U0001f600"',
    ],
)
def test_mysql_refuses_a_name_beyond_the_basic_plane(sql: str) -> None:
    with pytest.raises(QueryRejected, match="beyond U\\+FFFF"):
        compile_for(sql, "mysql")
    assert compile_for(sql, "postgres")


# -- through the engine: nothing reaches the source -----------------------------------------


@pytest.mark.parametrize("how", ["execute", "open_statement"])
def test_nul_in_sql_or_in_a_text_parameter_never_reaches_the_source(rig: Rig, how: str) -> None:
    secret = "s3cret-value"

    async def send(request: engine_module.QueryRequest) -> None:
        if how == "execute":
            await collect(rig.engine, request)
        else:
            await rig.engine.open_statement(CTX, request, page_rows=2)

    rig.source.answer(pa.table({"id": pa.array([1], pa.int64())}))
    with pytest.raises(QueryRejected, match=r"NUL character \(U\+0000\) at position 26"):
        run(send(query("SELECT id FROM orders -- \x00")))
    with pytest.raises(InvalidArgument, match="parameter 'note' contains a NUL") as caught:
        run(
            send(
                query(
                    "SELECT id FROM orders WHERE id > :low AND :note IS NOT NULL",
                    params={"low": 0, "note": f"{secret}\x00{secret}"},
                )
            )
        )
    assert secret not in caught.value.message
    assert rig.source.executions == []
    # Binary data may hold zero bytes: it is not text.
    run(send(query("SELECT id FROM orders WHERE :b IS NOT NULL", params={"b": b"a\x00b"})))
    assert rig.source.executions[0].params == (b"a\x00b",)


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
