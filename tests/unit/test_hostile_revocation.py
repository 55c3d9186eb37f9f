"""Hostile cases of revocation and stage drift: a query that reads a column in any
clause (filter, order, grouping, a subquery, a CTE, a join condition, `*`) holds on to
it, so unselecting the column stops the statement even when the column never appears in
its output; a query that does not read it goes on. Once stopped, the same text is
refused before anything reaches the source, and the statement's id tells nothing to
another tenant or stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from fabric.catalog.manager import CatalogManager
from fabric.errors import NotFound, QueryRejected, SelectionChanged
from tests.unit.test_query_engine import CTX, Rig, collect, make_rig, query, run

ANSWER = pa.table({"id": pa.array(range(1, 11), pa.int64())})

READS_AMOUNT = {
    "where": "SELECT id FROM orders WHERE amount > 1",
    "order-by": "SELECT id FROM orders ORDER BY amount",
    "group-having": "SELECT id FROM orders GROUP BY id HAVING sum(amount) > 0",
    "scalar-subquery": "SELECT id, (SELECT max(amount) FROM orders) AS m FROM orders",
    "cte": "WITH a AS (SELECT amount FROM orders) SELECT count(*) AS n FROM a",
    "join-condition": "SELECT o.id FROM orders o JOIN orders p ON p.amount = o.id",
    "star": "SELECT * FROM orders",
    "distinct-aggregate": "SELECT count(DISTINCT amount) AS n FROM orders",
    "exists": "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM orders p WHERE p.amount = 1)",
    "window": "SELECT id, sum(id) OVER (ORDER BY amount) AS s FROM orders",
}
LEAVES_AMOUNT = {
    "own-columns": "SELECT id FROM orders ORDER BY id",
    "count-rows": "SELECT count(*) AS n FROM orders",
}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as made:
        made.source.answer(ANSWER)
        yield made


def open_page(rig: Rig, sql: str) -> str:
    page = run(rig.engine.open_statement(CTX, query(sql), 3))
    assert not page.done
    return str(page.statement_id)


def unselect_amount(rig: Rig) -> None:
    manager = CatalogManager(rig.engine.store, lambda connection, stage: rig.source)
    manager.select("acme", "shop", "development", "orders", ["id"])
    rig.engine.purge_connection("acme", "shop")


@pytest.mark.parametrize("sql", READS_AMOUNT.values(), ids=READS_AMOUNT.keys())
def test_a_statement_reading_the_column_anywhere_is_stopped(rig: Rig, sql: str) -> None:
    statement = open_page(rig, sql)
    executed = len(rig.source.executions)
    unselect_amount(rig)
    with pytest.raises(SelectionChanged, match=r"column 'orders\.amount' is no longer selected"):
        run(rig.engine.fetch(CTX, statement, 3))
    if sql == READS_AMOUNT["star"]:
        # `*` means the selected columns: asked again, it no longer reads the column.
        run(collect(rig.engine, query(sql)))
        assert "amount" not in rig.source.executions[-1].sql
        return
    # Asked again, the text is refused before anything reaches the source.
    with pytest.raises(QueryRejected, match="amount"):
        run(collect(rig.engine, query(sql)))
    assert len(rig.source.executions) == executed


@pytest.mark.parametrize("sql", LEAVES_AMOUNT.values(), ids=LEAVES_AMOUNT.keys())
def test_a_statement_that_does_not_read_the_column_goes_on(rig: Rig, sql: str) -> None:
    statement = open_page(rig, sql)
    unselect_amount(rig)
    page = run(rig.engine.fetch(CTX, statement, 3))
    assert page.rows == 3


def test_a_revoked_statement_id_tells_nothing_to_another_tenant_or_stage(rig: Rig) -> None:
    statement = open_page(rig, READS_AMOUNT["where"])
    unselect_amount(rig)
    for other in (dataclasses.replace(CTX, tenant="globex"), dataclasses.replace(CTX, stage="qa")):
        with pytest.raises(NotFound) as hidden:
            run(rig.engine.fetch(other, statement, 3))
        assert "selection" not in hidden.value.message and "amount" not in hidden.value.message
    with pytest.raises(SelectionChanged):
        run(rig.engine.fetch(CTX, statement, 3))
