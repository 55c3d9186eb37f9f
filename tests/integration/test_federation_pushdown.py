"""Federated queries over real PostgreSQL, MariaDB and DuckDB sources: the rows, and
where the work ran (the statement each source was sent, as its connector received it
and as EXPLAIN reports it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fabric.errors import InvalidArgument, NotFound, QueryRejected
from fabric.query.engine import QueryRequest
from tests.integration.federation_support import (
    CTX,
    ORDERS_PER_CUSTOMER,
    Sources,
    rows_of,
    run,
    sources,
)


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Sources]:
    yield from sources(tmp_path)


def expected(fed: Sources, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(fed.pg_url) as conn:
        return [tuple(row) for row in conn.execute(sql.replace("{s}", fed.pg_schema)).fetchall()]


def test_a_filter_on_one_sources_column_runs_at_that_source(fed: Sources) -> None:
    table = run(
        rows_of(
            fed.engine,
            "SELECT c.c_name, o.o_orderkey FROM mdb.customer c "
            "JOIN pg.orders o ON o.o_custkey = c.c_custkey "
            "WHERE o.o_totalprice > :price AND c.c_nationkey = 3 ORDER BY o.o_orderkey",
            {"price": 990},
        )
    )
    (pg_sql,) = fed.sent["pg"]
    (mdb_sql,) = fed.sent["mdb"]
    assert '"o"."o_totalprice" > %s' in pg_sql
    assert "`c`.`c_nationkey` = 3" in mdb_sql
    # Only the columns the query uses are read; the unselected one never.
    assert "c_secret" not in mdb_sql and "o_status" not in pg_sql
    want = [
        (k, c)
        for k, c, price in (
            (g, 1 + (g % 200), (g % 997) + 0.5) for g in range(1, 200 * ORDERS_PER_CUSTOMER + 1)
        )
        if price > 990 and c % 5 == 3
    ]
    got = [(row["o_orderkey"], int(row["c_name"].split("#")[1])) for row in table.to_pylist()]
    assert got == want and got


def test_an_aggregate_over_one_sources_entities_runs_there(fed: Sources) -> None:
    table = run(
        rows_of(
            fed.engine,
            "SELECT c.c_name, s.total FROM mdb.customer c JOIN "
            "(SELECT o_custkey, sum(o_totalprice) AS total FROM pg.orders GROUP BY o_custkey) s "
            "ON s.o_custkey = c.c_custkey WHERE c.c_custkey <= 3 ORDER BY c.c_name",
        )
    )
    (pg_sql,) = fed.sent["pg"]
    assert "GROUP BY" in pg_sql and "SUM(" in pg_sql.upper()
    want = expected(
        fed,
        "SELECT o_custkey, sum(o_totalprice) FROM {s}.orders WHERE o_custkey <= 3 "
        "GROUP BY o_custkey ORDER BY o_custkey",
    )
    assert [row["total"] for row in table.to_pylist()] == [total for _, total in want]
    explained = run(
        fed.engine.explain(
            CTX,
            QueryRequest(
                "",
                "SELECT c.c_name, s.total FROM mdb.customer c JOIN (SELECT o_custkey, "
                "sum(o_totalprice) AS total FROM pg.orders GROUP BY o_custkey) s "
                "ON s.o_custkey = c.c_custkey",
            ),
        )
    )
    pg_part = next(p for p in explained.parts if p.connection == "pg")
    assert "aggregates" in pg_part.accepted and "subquery sent whole" in pg_part.accepted
    assert explained.parts[-1].name == "duckdb" and "JOIN" in explained.parts[-1].sql


def test_a_join_within_one_connection_is_sent_whole(fed: Sources) -> None:
    table = run(
        rows_of(
            fed.engine,
            "SELECT n.n_name, sum(l.l_quantity) AS qty FROM pg.orders o "
            "JOIN pg.lineitem l ON l.l_orderkey = o.o_orderkey "
            "JOIN mdb.customer c ON c.c_custkey = o.o_custkey "
            "JOIN ddb.nation n ON n.n_nationkey = c.c_nationkey "
            "WHERE o.o_status = 'F' GROUP BY n.n_name ORDER BY n.n_name",
        )
    )
    (pg_sql,) = fed.sent["pg"]
    assert '"orders" AS "o"' in pg_sql and '"lineitem" AS "l"' in pg_sql
    assert '"l"."l_orderkey" = "o"."o_orderkey"' in pg_sql
    want = expected(
        fed,
        "SELECT (o.o_custkey % 5), sum(l.l_quantity) FROM {s}.orders o JOIN {s}.lineitem l "
        "ON l.l_orderkey = o.o_orderkey WHERE o.o_status = 'F' GROUP BY 1 ORDER BY 1",
    )
    names = ["ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT"]
    assert sorted((r["n_name"], r["qty"]) for r in table.to_pylist()) == sorted(
        (names[int(str(k))], q) for k, q in want
    )


def test_a_query_of_one_connection_written_qualified_takes_the_single_source_path(
    fed: Sources,
) -> None:
    table = run(rows_of(fed.engine, "SELECT count(*) AS n FROM pg.orders WHERE o_status = 'F'"))
    assert table.column("n").to_pylist() == [len(range(3, 4001, 3))]
    (pg_sql,) = fed.sent["pg"]
    assert "COUNT(*)" in pg_sql.upper()
    explained = run(fed.engine.explain(CTX, QueryRequest("pg", "SELECT o_orderkey FROM orders")))
    assert not explained.federated and explained.parts[0].connection == "pg"


def test_a_small_side_sends_its_keys_as_bound_parameters(fed: Sources) -> None:
    sql = (
        "SELECT o.o_orderkey FROM mdb.customer c JOIN pg.orders o ON o.o_custkey = c.c_custkey "
        "WHERE c.c_custkey <= :last"
    )
    explained = run(fed.engine.explain(CTX, QueryRequest("", sql, {"last": 50}), analyze=True))
    (pg_sql,) = fed.sent["pg"]
    assert '"o"."o_custkey" IN (' in pg_sql and pg_sql.count("%s") == 64  # 50 keys, padded
    pg_part = next(p for p in explained.parts if p.connection == "pg")
    assert pg_part.dynamic_filter == "applied (50 keys)"
    assert pg_part.rows == 50 * ORDERS_PER_CUSTOMER  # not the whole orders table
    assert explained.parts[-1].rows == 50 * ORDERS_PER_CUSTOMER


@pytest.fixture
def fed_small_probe(tmp_path: Path) -> Iterator[Sources]:
    yield from sources(tmp_path, federation_dynamic_filter_rows=10)


def test_a_large_side_sends_no_filter(fed_small_probe: Sources) -> None:
    fed = fed_small_probe
    table = run(
        rows_of(
            fed.engine,
            "SELECT o.o_orderkey FROM mdb.customer c "
            "JOIN pg.orders o ON o.o_custkey = c.c_custkey WHERE c.c_custkey <= 50",
        )
    )
    assert table.num_rows == 50 * ORDERS_PER_CUSTOMER
    (pg_sql,) = fed.sent["pg"]
    assert " IN (" not in pg_sql


def test_an_unselected_column_or_entity_is_refused_before_any_source_runs(fed: Sources) -> None:
    with pytest.raises(QueryRejected):
        run(
            rows_of(
                fed.engine,
                "SELECT c.c_secret FROM mdb.customer c "
                "JOIN pg.orders o ON o.o_custkey = c.c_custkey",
            )
        )
    with pytest.raises(QueryRejected):
        run(rows_of(fed.engine, "SELECT * FROM mdb.customer c JOIN pg.pg_authid a ON true"))
    with pytest.raises(QueryRejected):
        run(
            rows_of(
                fed.engine,
                "SELECT c.c_name FROM mdb.customer c JOIN read_csv('/etc/passwd') p ON true",
            )
        )
    with pytest.raises(QueryRejected):
        # What stays with DuckDB is bounded as any source's query is.
        run(
            rows_of(
                fed.engine,
                "SELECT CAST(c.c_name AS varchar(100000000)) FROM mdb.customer c "
                "JOIN pg.orders o ON o.o_custkey = c.c_custkey",
            )
        )
    assert fed.sent == {"pg": [], "mdb": [], "ddb": []}


def test_a_connection_the_caller_cannot_see_is_not_found(fed: Sources) -> None:
    other = CTX.__class__(tenant="other", stage=CTX.stage, role=CTX.role, principal="x")
    with pytest.raises(NotFound):
        run(
            _drain(
                fed.engine,
                other,
                "SELECT c.c_name FROM mdb.customer c JOIN pg.orders o ON o.o_custkey = c.c_custkey",
            )
        )
    with pytest.raises(NotFound):
        run(rows_of(fed.engine, "SELECT 1 AS x FROM mdb.customer c JOIN nowhere.t t ON true"))
    with pytest.raises(InvalidArgument):
        run(rows_of(fed.engine, "SELECT c_name FROM customer"))


async def _drain(engine: object, ctx: object, sql: str) -> None:
    async for _ in engine.execute(ctx, QueryRequest("", sql)):  # type: ignore[attr-defined]
        pass


def test_a_parameter_binds_in_every_part_that_uses_it(fed: Sources) -> None:
    table = run(
        rows_of(
            fed.engine,
            "SELECT c.c_custkey, o.o_orderkey FROM mdb.customer c "
            "JOIN pg.orders o ON o.o_custkey = c.c_custkey "
            "WHERE c.c_custkey < :k AND o.o_orderkey < :k * 10 "
            "AND o.o_orderkey + c.c_custkey > :k ORDER BY o.o_orderkey",
            {"k": 20},
        )
    )
    (pg_sql,) = fed.sent["pg"]
    (mdb_sql,) = fed.sent["mdb"]
    assert "< %s * 10" in pg_sql and "< %s" in mdb_sql
    want = [
        (1 + (g % 200), g) for g in range(1, 200) if 1 + (g % 200) < 20 and g + 1 + (g % 200) > 20
    ]
    assert [(r["c_custkey"], r["o_orderkey"]) for r in table.to_pylist()] == want and want


def test_a_purge_drops_the_plans_that_read_the_connection(fed: Sources) -> None:
    sql = "SELECT c.c_name FROM mdb.customer c JOIN pg.orders o ON o.o_custkey = c.c_custkey"
    run(rows_of(fed.engine, sql))
    assert fed.engine.purge_connection(CTX.tenant, "ddb")["compiled"] == 0
    assert fed.engine.purge_connection(CTX.tenant, "pg")["compiled"] >= 1


def test_integers_divide_in_duckdb_as_in_postgresql(fed: Sources) -> None:
    table = run(
        rows_of(
            fed.engine,
            "SELECT o.o_orderkey / c.c_custkey AS q FROM mdb.customer c "
            "JOIN pg.orders o ON o.o_custkey = c.c_custkey "
            "WHERE c.c_custkey = 7 ORDER BY o.o_orderkey",
        )
    )
    want = [g // 7 for g in range(1, 200 * ORDERS_PER_CUSTOMER + 1) if 1 + (g % 200) == 7]
    assert table.column("q").to_pylist() == want
