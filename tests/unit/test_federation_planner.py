"""The federation planner's decisions, without servers: what each source is sent and
what stays with DuckDB, for the join shapes whose semantics constrain pushdown."""

from __future__ import annotations

import pyarrow as pa
import pytest

from connectors.base import ParamStyle
from fabric.errors import InvalidArgument, QueryRejected
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.query.compiler import QueryLimits, StatementCompiler
from fabric.query.compiler.reader import QueryReader
from fabric.query.compiler.statement_compiler import fold_unquoted_names
from fabric.query.federation.naming import qualify_connections
from fabric.query.federation.plan import FederatedPlan, SourceSide
from fabric.query.federation.planner import FederationPlanner


def _catalog(connection: str, tables: dict[str, list[str]]) -> CatalogSnapshot:
    entities = {
        name: Entity(
            name,
            "s",
            name,
            tuple(
                ColumnInfo(c, "character(10)" if c.endswith("_code") else "integer", pa.int32())
                for c in columns
            ),
        )
        for name, columns in tables.items()
    }
    return CatalogSnapshot("t", connection, 1, entities)


SIDES = {
    "pg": SourceSide(
        "pg",
        _catalog(
            "pg", {"orders": ["o_id", "o_cust", "o_total", "o_code"], "items": ["i_order", "i_qty"]}
        ),
        "postgres",
        ParamStyle.FORMAT,
        True,
        True,
        True,
        True,
        30_000,
    ),
    "my": SourceSide(
        "my",
        _catalog("my", {"customer": ["c_id", "c_nation", "c_code"]}),
        "mysql",
        ParamStyle.FORMAT,
        True,
        True,
        True,
        True,
        30_000,
    ),
}


def plan(sql: str, default: str = "") -> FederatedPlan:
    reader = QueryReader(QueryLimits())
    tree = reader.parse(sql, reader.tokenize(sql))
    fold_unquoted_names(tree)
    qualify_connections(tree, default)
    return FederationPlanner(StatementCompiler()).plan(tree, SIDES, max_rows=100)  # type: ignore[arg-type]


def sent(result: FederatedPlan, connection: str) -> list[str]:
    return [f.compiled.sql for f in result.fragments if f.connection == connection]


def test_a_left_joins_nullable_side_takes_only_its_own_on_conditions() -> None:
    result = plan(
        "SELECT c.c_id, o.o_total FROM my.customer c LEFT JOIN pg.orders o "
        "ON o.o_cust = c.c_id AND o.o_total > 5 WHERE c.c_nation = 1 AND o.o_id > 3"
    )
    (pg,) = sent(result, "pg")
    (my,) = sent(result, "my")
    assert '"o"."o_total" > 5' in pg and '"o"."o_id" > 3' not in pg  # WHERE on it stays
    assert "`c`.`c_nation` = 1" in my
    assert "LEFT JOIN" in result.remainder
    assert "> 3" in result.remainder


def test_a_right_join_keeps_every_condition_in_duckdb() -> None:
    result = plan(
        "SELECT c.c_id FROM my.customer c RIGHT JOIN pg.orders o ON o.o_cust = c.c_id "
        "WHERE c.c_nation = 1"
    )
    assert all("WHERE" not in sql for sql in sent(result, "pg") + sent(result, "my"))
    assert "RIGHT JOIN" in result.remainder and "= 1" in result.remainder


def test_a_correlated_subquery_is_not_sent_whole_but_takes_the_outer_keys() -> None:
    result = plan(
        "SELECT c.c_id FROM my.customer c WHERE c.c_nation = :n AND EXISTS "
        "(SELECT 1 FROM pg.orders o WHERE o.o_cust = c.c_id AND o.o_total > 10)"
    )
    (pg,) = sent(result, "pg")
    assert '"o"."o_total" > 10' in pg and "EXISTS" in result.remainder
    (df,) = result.dynamic_filters
    assert result.fragment(df.probe).connection == "my"
    assert result.fragment(df.target).connection == "pg"


def test_an_uncorrelated_subquery_with_having_goes_with_its_source() -> None:
    result = plan(
        "SELECT c.c_id, o.o_total FROM my.customer c JOIN pg.orders o ON o.o_cust = c.c_id "
        "WHERE o.o_id IN (SELECT i.i_order FROM pg.items i GROUP BY i.i_order "
        "HAVING sum(i.i_qty) > 300)"
    )
    (pg,) = sent(result, "pg")
    assert "HAVING" in pg and "IN (SELECT" in pg
    assert "HAVING" not in result.remainder


def test_an_or_across_sources_pushes_what_each_branch_asks_of_one_table() -> None:
    result = plan(
        "SELECT c.c_id FROM my.customer c JOIN pg.orders o ON o.o_cust = c.c_id "
        "WHERE (c.c_nation = 1 AND o.o_total > 5) OR (c.c_nation = 2 AND o.o_total < 3)"
    )
    (pg,) = sent(result, "pg")
    (my,) = sent(result, "my")
    assert '"o"."o_total" > 5 OR "o"."o_total" < 3' in pg
    assert "`c`.`c_nation` = 1 OR `c`.`c_nation` = 2" in my
    assert " OR " in result.remainder  # the condition itself stays


def test_char_columns_reach_duckdb_unpadded() -> None:
    result = plan(
        "SELECT c.c_code, o.o_code FROM my.customer c JOIN pg.orders o ON o.o_cust = c.c_id"
    )
    (my,) = sent(result, "my")
    (pg,) = sent(result, "pg")
    assert "CAST" not in my  # MariaDB returns CHAR without its padding already
    assert 'CAST("o"."o_code" AS TEXT)' in pg


def test_unqualified_names_need_a_connection() -> None:
    with pytest.raises(InvalidArgument):
        plan("SELECT o_id FROM orders")
    with pytest.raises(QueryRejected):
        plan("SELECT x.nope FROM pg.orders x JOIN my.customer c ON c.c_id = x.o_cust")
