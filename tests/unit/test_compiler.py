"""Unit tests of the statement compiler: parameters, binding, limits, guards, output."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from connectors.base import ParamStyle
from fabric.errors import InvalidArgument, QueryRejected
from fabric.query.compiler import CompiledStatement, StatementCompiler
from tests.support.cost import cpu_seconds, tokenize_seconds
from tests.unit.test_compiler_golden import sales_catalog


def compile_sql(
    sql: str,
    *,
    dialect: str = "postgres",
    style: ParamStyle = ParamStyle.FORMAT,
    max_rows: int = 100,
    compiler: StatementCompiler | None = None,
) -> CompiledStatement:
    return (compiler or StatementCompiler()).compile(
        sql, sales_catalog(), dialect=dialect, param_style=style, max_rows=max_rows
    )


def test_param_names_in_text_order_with_repetition() -> None:
    compiled = compile_sql(
        "SELECT id FROM orders WHERE status = :b AND amount > :a AND amount < :a + :b"
    )
    assert compiled.param_names == ("b", "a", "a", "b")
    assert compiled.sql.count("%s") == 4


def test_qmark_style_for_duckdb() -> None:
    compiled = compile_sql(
        "SELECT id FROM orders WHERE id = :id", dialect="duckdb", style=ParamStyle.QMARK
    )
    assert compiled.sql.endswith('WHERE "orders"."id" = ? LIMIT 101')
    assert compiled.param_names == ("id",)


def test_bind_orders_values_and_repeats() -> None:
    compiled = compile_sql(
        "SELECT id FROM orders WHERE amount > :min AND status = :s OR amount > :min"
    )
    assert compiled.bind({"s": "paid", "min": 10}) == (10, "paid", 10)


def test_bind_missing_parameter() -> None:
    compiled = compile_sql("SELECT id FROM orders WHERE amount > :min AND status = :s")
    with pytest.raises(InvalidArgument, match="missing parameter 's'"):
        compiled.bind({"min": 1})


def test_bind_unknown_parameter_does_not_echo_values() -> None:
    compiled = compile_sql("SELECT id FROM orders WHERE amount > :min")
    with pytest.raises(InvalidArgument, match="unknown parameter 'extra'") as caught:
        compiled.bind({"min": 1, "extra": "secret-value"})
    assert "secret-value" not in str(caught.value)


def test_bind_without_parameters() -> None:
    assert compile_sql("SELECT id FROM orders").bind({}) == ()


def test_output_does_not_depend_on_parameter_values() -> None:
    first = compile_sql("SELECT id FROM orders WHERE status = :s")
    second = compile_sql("SELECT id FROM orders WHERE status = :s")
    assert first == second
    assert first.bind({"s": "a"}) != second.bind({"s": "b"})
    assert first.fingerprint == second.fingerprint


def test_fingerprint_differs_by_dialect() -> None:
    pg = compile_sql("SELECT id FROM orders")
    duck = compile_sql("SELECT id FROM orders", dialect="duckdb", style=ParamStyle.QMARK)
    assert pg.fingerprint != duck.fingerprint


def test_entities_sorted_unique() -> None:
    compiled = compile_sql(
        "SELECT o.id FROM orders o JOIN order_items i ON i.order_id = o.id "
        "WHERE o.id IN (SELECT order_id FROM order_items)"
    )
    assert compiled.entities == ("order_items", "orders")


@pytest.mark.parametrize(
    ("sql", "row_limit", "may_truncate"),
    [
        ("SELECT id FROM orders", 101, True),
        ("SELECT id FROM orders LIMIT 5", 5, False),
        ("SELECT id FROM orders LIMIT 100", 100, False),
        ("SELECT id FROM orders LIMIT 101", 101, True),
        ("SELECT id FROM orders LIMIT 100000", 101, True),
        ("SELECT id FROM orders UNION SELECT id FROM products", 101, True),
    ],
)
def test_row_limit(sql: str, row_limit: int, may_truncate: bool) -> None:
    compiled = compile_sql(sql)
    assert compiled.row_limit == row_limit
    assert compiled.max_rows == 100
    assert compiled.may_truncate is may_truncate
    assert compiled.sql.endswith(f"LIMIT {row_limit}")


def test_inner_limits_are_kept() -> None:
    compiled = compile_sql("SELECT id FROM (SELECT id FROM orders LIMIT 5000) s")
    assert 'LIMIT 5000) AS "s" LIMIT 101' in compiled.sql


def test_comments_are_stripped() -> None:
    compiled = compile_sql("SELECT id /* hidden */ FROM orders -- trailing\nWHERE id = :id")
    assert "hidden" not in compiled.sql and "trailing" not in compiled.sql
    assert "/*" not in compiled.sql and "--" not in compiled.sql


def test_percent_doubled_only_for_format() -> None:
    sql = "SELECT id FROM customers WHERE name LIKE '%x%' AND id % 2 = :p"
    assert "'%%x%%'" in compile_sql(sql).sql
    assert "%% 2" in compile_sql(sql).sql
    assert "'%x%'" in compile_sql(sql, dialect="duckdb", style=ParamStyle.QMARK).sql


def test_string_that_looks_like_a_parameter_is_left_alone() -> None:
    compiled = compile_sql("SELECT id FROM customers WHERE name = ':not_a_param'")
    assert compiled.param_names == ()
    assert "':not_a_param'" in compiled.sql


def test_deep_nesting_is_rejected_fast() -> None:
    sql = "SELECT " + "(" * 5000 + "1" + ")" * 5000
    with pytest.raises(QueryRejected, match="nested too deeply"):
        compile_sql(sql)
    # Rejected after one tokenizer pass, before any parser recursion (measured ~1x).
    assert cpu_seconds(lambda: compile_sql(sql)) <= 10 * tokenize_seconds(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "NOT " * 5000 + "true",
        "SELECT " + "- " * 5000 + "1",
        "SELECT " + "CASE WHEN true THEN " * 3000 + "1" + " END" * 3000,
        "SELECT id FROM orders WHERE id IN "
        + "(SELECT id FROM orders WHERE id IN " * 200
        + "(1)"
        + ")" * 200,
    ],
)
def test_other_deep_shapes_are_rejected_not_crashed(sql: str) -> None:
    with pytest.raises(QueryRejected, match="nested too deeply"):
        compile_sql(sql)
    assert cpu_seconds(lambda: compile_sql(sql)) <= 10 * tokenize_seconds(sql)


def test_parentheses_inside_strings_and_comments_do_not_count() -> None:
    sql = "SELECT id FROM orders WHERE status = '" + "(" * 200 + "' /* " + "(" * 200 + " */"
    assert compile_sql(sql).param_names == ()


def test_nesting_limit_is_configurable() -> None:
    compiler = StatementCompiler(max_nesting_depth=3)
    compile_sql("SELECT ((1))", compiler=compiler)
    with pytest.raises(QueryRejected, match="limit is 3"):
        compile_sql("SELECT ((((1))))", compiler=compiler)


def test_long_text_rejected() -> None:
    compiler = StatementCompiler(max_sql_length=50)
    with pytest.raises(QueryRejected, match="longer than 50 characters"):
        compile_sql(
            "SELECT id FROM orders WHERE " + " OR ".join(["id = 1"] * 20), compiler=compiler
        )


def test_long_flat_condition_is_fine() -> None:
    sql = "SELECT id FROM orders WHERE " + " OR ".join(f"id = {i}" for i in range(2000))
    assert compile_sql(sql).sql.count("OR") == 1999


def test_parse_error_reports_position_without_echoing_text() -> None:
    with pytest.raises(QueryRejected, match=r"syntax error at line 2, column \d+") as caught:
        compile_sql("SELECT id\nFROM orders WHERE AND 'topsecret'")
    assert "topsecret" not in str(caught.value)


def test_unterminated_string_does_not_echo_text() -> None:
    with pytest.raises(QueryRejected) as caught:
        compile_sql("SELECT 'topsecret FROM orders")
    assert "topsecret" not in str(caught.value)


def test_hidden_columns_never_reach_the_output() -> None:
    for sql in (
        "SELECT * FROM customers",
        "SELECT c.* FROM customers c",
        "SELECT * FROM (SELECT * FROM customers) s",
    ):
        compiled = compile_sql(sql)
        assert "ssn" not in compiled.sql
        assert '"Signup Date"' in compiled.sql


def test_unknown_dialect_and_bad_max_rows() -> None:
    with pytest.raises(InvalidArgument, match="dialect 'oracle'"):
        compile_sql("SELECT 1", dialect="oracle")
    with pytest.raises(InvalidArgument, match="max_rows"):
        compile_sql("SELECT 1", max_rows=0)


def test_distinct_on_refused_where_it_cannot_be_kept_exact() -> None:
    sql = "SELECT DISTINCT ON (region) region FROM customers"
    assert compile_sql(sql).sql.startswith("SELECT DISTINCT ON")
    with pytest.raises(QueryRejected, match="DISTINCT ON is not supported on tsql"):
        compile_sql(sql, dialect="tsql")


def test_compiled_statement_is_immutable() -> None:
    compiled = compile_sql("SELECT 1")
    with pytest.raises(AttributeError):
        compiled.sql = "DROP TABLE x"  # type: ignore[misc]


def _keyed_catalog() -> Any:
    catalog = sales_catalog()
    entities = dict(catalog.entities)
    entities["orders"] = dataclasses.replace(entities["orders"], primary_key=("id",))
    entities["order_items"] = dataclasses.replace(
        entities["order_items"], primary_key=("order_id", "product_id")
    )
    return dataclasses.replace(catalog, entities=entities)


@pytest.mark.parametrize(
    ("sql", "row_bound"),
    [
        # the whole primary key equal to a parameter or a literal: one row at most
        ("SELECT * FROM orders WHERE id = :k", 1),
        ("SELECT amount FROM orders o WHERE o.id = 7", 1),
        ("SELECT * FROM orders WHERE :k = id AND status = 'open'", 1),
        ("SELECT * FROM orders WHERE (status = :s AND (id = :k))", 1),
        ("SELECT count(*) FROM orders WHERE id = :k GROUP BY status", 1),
        ("SELECT * FROM order_items WHERE order_id = :o AND product_id = :p", 1),
        # not provably one row
        ("SELECT * FROM order_items WHERE order_id = :o", 101),
        ("SELECT * FROM orders WHERE id = :k OR status = 'open'", 101),
        ("SELECT * FROM orders WHERE id > :k", 101),
        ("SELECT * FROM orders WHERE id = customer_id", 101),
        ("SELECT * FROM orders WHERE id = :k + 1", 101),
        ("SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = :k", 101),
        ("SELECT * FROM (SELECT * FROM orders) o WHERE o.id = :k", 101),
        ("SELECT id FROM orders WHERE id = :k UNION ALL SELECT id FROM orders WHERE id = :k", 101),
        ("SELECT * FROM customers WHERE id = :k", 101),  # no primary key in the catalog
        ("SELECT id FROM orders LIMIT 5", 5),
    ],
)
def test_row_bound_proves_key_lookups(sql: str, row_bound: int) -> None:
    compiled = StatementCompiler().compile(
        sql, _keyed_catalog(), dialect="postgres", param_style=ParamStyle.FORMAT, max_rows=100
    )
    assert compiled.row_bound == row_bound
    assert compiled.row_limit == (5 if "LIMIT 5" in sql else 101)  # the LIMIT is unchanged


@pytest.mark.parametrize(
    ("dialect", "longest", "longest_output", "unit"),
    [
        ("postgres", 63, 63, "bytes"),
        ("mysql", 64, 255, "characters"),
        ("tsql", 128, 128, "UTF-16 code units"),
    ],
)
def test_a_name_longer_than_the_source_keeps_is_refused(
    dialect: str, longest: int, longest_output: int, unit: str
) -> None:
    fits = "a" * longest_output
    compiled = compile_sql(f"SELECT id AS {fits} FROM orders", dialect=dialect)
    assert fits in compiled.sql
    with pytest.raises(QueryRejected, match=f"at most {longest_output} {unit} of an output"):
        compile_sql(f"SELECT id AS {'o' * (longest_output + 1)} FROM orders", dialect=dialect)
    name = "n" * longest
    assert compile_sql(f"SELECT {name}.id FROM orders {name}", dialect=dialect)
    too_long = "b" * (longest + 1)
    for sql in (
        f"SELECT {too_long}.id FROM orders {too_long}",
        f"WITH {too_long} AS (SELECT id FROM orders) SELECT id FROM {too_long}",
        f"SELECT x.id FROM (SELECT id FROM orders) x ({too_long})",
    ):
        with pytest.raises(QueryRejected, match=f"at most {longest} {unit} of a name"):
            compile_sql(sql, dialect=dialect)


def test_duckdb_keeps_names_of_any_length() -> None:
    name = "d" * 2000
    sql = f"WITH {name} AS (SELECT id AS {name} FROM orders) SELECT {name} FROM {name}"
    assert name in compile_sql(sql, dialect="duckdb", style=ParamStyle.QMARK).sql


def test_postgres_counts_an_alias_in_bytes() -> None:
    # 32 two-byte characters are 64 bytes: PostgreSQL would cut the name to 63 bytes.
    alias = '"' + "é" * 32 + '"'
    with pytest.raises(QueryRejected, match="is 64 bytes long; postgres keeps at most 63 bytes"):
        compile_sql(f"SELECT id AS {alias} FROM orders")
    assert compile_sql(f"SELECT id AS {alias} FROM orders", dialect="mysql")


def test_long_entity_and_column_names_from_the_catalog_are_not_refused() -> None:
    # Only names the query introduces are checked: catalog names exist in the source.
    catalog = sales_catalog()
    long_name = "c" * 70
    entity = dataclasses.replace(catalog.entities["orders"], name=long_name)
    catalog = dataclasses.replace(catalog, entities={long_name: entity})
    compiled = StatementCompiler().compile(
        f"SELECT id FROM {long_name}",
        catalog,
        dialect="postgres",
        param_style=ParamStyle.FORMAT,
        max_rows=10,
    )
    assert long_name in compiled.sql


def test_an_overlong_alias_message_does_not_echo_the_whole_name() -> None:
    with pytest.raises(QueryRejected) as caught:
        compile_sql(f"SELECT id AS {'z' * 5000} FROM orders")
    assert len(str(caught.value)) < 200
