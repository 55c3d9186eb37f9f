"""The runtime query path end to end: gRPC client -> gateway -> DuckDB, and back as Arrow."""

from __future__ import annotations

import datetime as dt
import gc
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import duckdb
import grpc
import pyarrow as pa
import pytest

from fabric.client import FabricClient
from fabric.errors import InvalidArgument, NotFound, QueryRejected
from fabric.v1 import query_pb2 as pb
from tests.e2e.conftest import Harness, start_harness
from tests.support.executors import counting_source_calls

REVENUE = """
    SELECT c.country, COUNT(*) AS orders, SUM(o.amount) AS revenue
    FROM orders o JOIN customers c ON c.id = o.customer_id
    WHERE o.amount >= :min_amount
    GROUP BY c.country ORDER BY c.country
"""


def client(h: Harness, tenant: str = "default", stage: str = "development") -> FabricClient:
    return FabricClient(h.address, timeout=30, metadata=[("x-tenant", tenant), ("x-stage", stage)])


def direct(h: Harness, sql: str, params: list[object] | None = None) -> pa.Table:
    settings = h.store.get_connection("default", "shop").settings_for("development")
    assert settings is not None
    path = settings["path"]
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(sql, params=params or None).to_arrow_table()


def test_query_returns_what_the_source_returns(harness: Harness) -> None:
    with client(harness) as c:
        result = c.execute("shop", REVENUE, {"min_amount": Decimal("100.00")})
    expected = direct(
        harness,
        """
        SELECT c.country, COUNT(*) AS orders, SUM(o.amount) AS revenue
        FROM orders o JOIN customers c ON c.id = o.customer_id
        WHERE o.amount >= 100 GROUP BY c.country ORDER BY c.country""",
    )
    assert result.table.to_pylist() == expected.to_pylist()
    assert result.table.schema.field("revenue").type == expected.schema.field("revenue").type
    assert result.summary.rows == 3
    assert not result.summary.truncated and not result.summary.from_cache
    assert {r["country"] for r in result.table.to_pylist()} == {"DE", "FR", "ÉIRE"}


def test_large_result_streams_in_many_messages_and_arrives_whole(harness: Harness) -> None:
    with client(harness) as c:
        reader = c.query_batches("shop", "SELECT * FROM orders ORDER BY id")
        batches = list(reader)
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 20_000
    assert table.column("id").to_pylist() == list(range(1, 20_001))
    assert table.schema.field("placed_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("note").null_count == 2_000


def test_same_sql_other_values_compiles_once_and_runs_one_text(harness: Harness) -> None:
    with client(harness) as c:
        for amount in (1, 50, 500):
            c.query("shop", REVENUE, {"min_amount": amount})
    stats = harness.engine.statements
    assert (stats.misses, stats.hits) == (1, 2)
    texts = {sql for sql, _ in harness.executed}
    assert len(texts) == 1
    assert [params for _, params in harness.executed] == [(1,), (50,), (500,)]
    assert "500" not in texts.pop()


def test_rejected_query_never_reaches_the_source_and_names_the_part(harness: Harness) -> None:
    cases = {
        "SELECT email FROM customers": "email",
        "SELECT * FROM payroll": "payroll",
        "DELETE FROM orders": "DELETE",
        "SELECT 1; SELECT 2": "one statement",
        "SELECT * FROM pg_catalog.pg_user": "pg_",
    }
    with client(harness) as c:
        for sql, named in cases.items():
            with pytest.raises(QueryRejected) as caught:
                c.query("shop", sql)
            assert named.lower() in caught.value.message.lower(), (sql, caught.value.message)
    assert harness.executed == []


def test_rejection_is_invalid_argument_on_the_wire(harness: Harness) -> None:
    from fabric.v1 import query_pb2 as pb
    from fabric.v1 import query_pb2_grpc as pb_grpc

    with grpc.insecure_channel(harness.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.Execute(
                    pb.ExecuteRequest(connection="shop", sql="SELECT email FROM customers")
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())["fabric-error-code"] == "query_rejected"


def test_unknown_connection_and_missing_parameter(harness: Harness) -> None:
    with client(harness) as c:
        with pytest.raises(NotFound):
            c.query("nope", "SELECT id FROM orders")
        with pytest.raises(InvalidArgument, match="min_amount"):
            c.query("shop", REVENUE)
        with pytest.raises(InvalidArgument, match="max_rows"):
            c.query("shop", "SELECT id FROM orders", max_rows=0)
    assert harness.executed == []


def test_row_limit_truncates_and_says_so(harness: Harness) -> None:
    with client(harness) as c:
        truncated = c.execute("shop", "SELECT id FROM orders ORDER BY id", max_rows=10)
        exact = c.execute("shop", "SELECT id FROM orders ORDER BY id LIMIT 10", max_rows=10)
    assert truncated.table.column("id").to_pylist() == list(range(1, 11))
    assert truncated.summary.truncated and truncated.summary.rows == 10
    assert exact.summary.rows == 10 and not exact.summary.truncated


def test_cache_lifetime_is_exact_and_hits_skip_the_source(harness: Harness) -> None:
    with client(harness) as c:
        first = c.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=10)
        harness.clock.advance(9.999)
        second = c.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=10)
        harness.clock.advance(0.001)
        third = c.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=10)
    assert not first.summary.from_cache
    assert second.summary.from_cache and second.table.equals(first.table)
    assert not third.summary.from_cache
    assert len(harness.executed) == 2


def test_cache_entries_are_not_shared_across_tenants_stages_or_values(harness: Harness) -> None:
    with client(harness) as a, client(harness, tenant="other") as b:
        a.query("shop", REVENUE, {"min_amount": 10}, cache_ttl=60)
        assert not b.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=60).summary.from_cache
        assert not a.execute("shop", REVENUE, {"min_amount": 11}, cache_ttl=60).summary.from_cache
        assert not a.execute("shop", REVENUE, {"min_amount": 10.0}, cache_ttl=60).summary.from_cache
        assert a.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=60).summary.from_cache
    with client(harness, stage="production") as p:
        # The connection's settings apply to every stage; each stage still gets its own
        # cache entry for the same text and values.
        assert not p.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=60).summary.from_cache
        assert p.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=60).summary.from_cache


def test_catalog_change_misses_the_cache(harness: Harness) -> None:
    from fabric.app.parts import catalog_manager

    with client(harness) as c:
        c.query("shop", REVENUE, {"min_amount": 10}, cache_ttl=60)
        catalog_manager(harness.store).select("default", "shop", "development", "payroll")
        after = c.execute("shop", REVENUE, {"min_amount": 10}, cache_ttl=60)
    assert not after.summary.from_cache
    assert harness.engine.statements.misses == 2


def test_truncated_results_are_never_cached(harness: Harness) -> None:
    with client(harness) as c:
        c.query("shop", "SELECT id FROM orders", max_rows=5, cache_ttl=60)
        again = c.execute("shop", "SELECT id FROM orders", max_rows=5, cache_ttl=60)
    assert not again.summary.from_cache and again.summary.truncated


def test_result_larger_than_the_budget_streams_through(tmp_path: Path) -> None:
    h = start_harness(tmp_path, cache_max_bytes=64 * 1024)
    try:
        with client(h) as c:
            big = c.execute("shop", "SELECT * FROM orders", cache_ttl=60)
            again = c.execute("shop", "SELECT * FROM orders", cache_ttl=60)
        assert big.table.num_rows == 20_000 and again.table.num_rows == 20_000
        assert not again.summary.from_cache
        stats = h.engine.results.stats
        assert stats.bytes_held <= 64 * 1024 and stats.entries == 0
    finally:
        h.gateway.stop()
        h.store.close()


def test_paging_walks_the_result_and_closing_drops_it(harness: Harness) -> None:
    with client(harness) as c:
        statement = c.open_statement(
            "shop",
            "SELECT id FROM orders WHERE id <= :n ORDER BY id",
            {"n": 2_500},
            page_rows=1_000,
        )
        pages = list(statement)
        assert [p.num_rows for p in pages] == [1_000, 1_000, 500]
        assert pa.concat_tables(pages).column("id").to_pylist() == list(range(1, 2_501))
        assert statement.done and statement.summary is not None
        assert statement.summary.rows == 2_500
        assert harness.engine.open_statements.stats.open == 0

        other = c.open_statement("shop", "SELECT id FROM orders", page_rows=10)
        assert other.fetch() is not None
        assert harness.engine.open_statements.stats.open == 1
        other.close()
        assert harness.engine.open_statements.stats.open == 0
        with pytest.raises(NotFound):
            c._unary(c._endpoints[0].stub.Fetch, pb.FetchRequest(statement_id=other.id))


def test_idle_statement_is_purged_with_its_parameters(harness: Harness) -> None:
    with client(harness) as c:
        statement = c.open_statement(
            "shop", "SELECT id FROM orders WHERE id > :after", {"after": 7}, page_rows=10
        )
        assert statement.fetch() is not None
        registry = harness.engine.open_statements
        held = weakref.ref(
            registry.get(statement.id, tenant="default", stage="development").payload
        )
        harness.clock.advance(299.0)
        assert registry.sweep() == 0
        harness.clock.advance(1.0)
        assert registry.sweep() == 1
        gc.collect()
        assert held() is None
        assert registry.stats.purged_idle == 1
        with pytest.raises(NotFound):
            statement.fetch()


def test_other_tenant_cannot_touch_a_statement(harness: Harness) -> None:
    with client(harness) as a, client(harness, tenant="other") as b:
        statement = a.open_statement("shop", "SELECT id FROM orders", page_rows=10)
        with pytest.raises(NotFound):
            b._unary(b._endpoints[0].stub.Fetch, pb.FetchRequest(statement_id=statement.id))
        assert statement.fetch() is not None
        statement.close()


def test_preview_shows_only_selected_columns(harness: Harness) -> None:
    with client(harness) as c:
        table = c.preview("shop", "customers", limit=5)
        with pytest.raises(NotFound):
            c.preview("shop", "payroll")
    assert table.column_names == ["id", "name", "country"]
    assert table.num_rows == 5


def test_parameters_of_every_type_bind(harness: Harness) -> None:
    sql = """SELECT COUNT(*) AS n FROM orders
             WHERE placed_at >= :since AND amount > :amount AND note <> :note
               AND customer_id IN (SELECT id FROM customers WHERE country = :country)"""
    since = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
    with client(harness) as c:
        n = (
            c.query(
                "shop",
                sql,
                {"since": since, "amount": Decimal("10.50"), "note": "n1", "country": "ÉIRE"},
            )
            .column("n")[0]
            .as_py()
        )
    expected = (
        direct(
            harness,
            """SELECT COUNT(*) FROM orders WHERE placed_at >= ? AND
        amount > ? AND note <> ? AND customer_id IN (SELECT id FROM customers WHERE
        country = ?)""",
            [since, Decimal("10.50"), "n1", "ÉIRE"],
        )
        .column(0)[0]
        .as_py()
    )
    assert n == expected and n > 0


def test_metrics_count_queries_and_cache(harness: Harness) -> None:
    from prometheus_client import generate_latest

    with client(harness) as c:
        c.query("shop", REVENUE, {"min_amount": 1}, cache_ttl=60)
        c.query("shop", REVENUE, {"min_amount": 1}, cache_ttl=60)
        with pytest.raises(QueryRejected):
            c.query("shop", "SELECT email FROM customers")
    text = generate_latest(harness.engine.metrics.registry).decode()
    assert 'fabric_queries_total{method="execute",outcome="ok",protocol="grpc"} 2.0' in text
    assert (
        'fabric_queries_total{method="execute",outcome="query_rejected",protocol="grpc"} 1.0'
        in text
    )
    assert "fabric_result_cache_hits_total 1.0" in text
    assert "fabric_result_cache_bytes " in text


def _wait_for(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_identical_queries_in_flight_run_once(harness: Harness) -> None:
    harness.gate.clear()  # the first query waits at the source until every caller is in
    callers = 6
    results: list[object] = []

    def ask() -> None:
        with client(harness) as c:
            results.append(c.execute("shop", REVENUE, {"min_amount": 3}, cache_ttl=60))

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(ask) for _ in range(callers)]
        try:
            assert _wait_for(
                lambda: harness.engine.snapshot()["result_cache_coalesced"] == callers - 1
            )
            assert len(harness.executed) == 1
        finally:
            harness.gate.set()
        for future in futures:
            future.result(timeout=30)
    assert len(harness.executed) == 1
    tables = [r.table for r in results]  # type: ignore[attr-defined]
    assert all(t.equals(tables[0]) for t in tables)
    assert sum(r.summary.from_cache for r in results) == callers - 1  # type: ignore[attr-defined]


def test_waiters_run_themselves_when_the_first_result_cannot_be_cached(harness: Harness) -> None:
    harness.gate.clear()
    truncating = "SELECT id FROM orders ORDER BY id"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            lambda: client(harness).execute("shop", truncating, max_rows=3, cache_ttl=60)
        )
        assert _wait_for(lambda: len(harness.executed) == 1)
        second = pool.submit(
            lambda: client(harness).execute("shop", truncating, max_rows=3, cache_ttl=60)
        )
        assert _wait_for(lambda: harness.engine.snapshot()["result_cache_coalesced"] == 1)
        harness.gate.set()
        a, b = first.result(timeout=30), second.result(timeout=30)
    assert a.summary.truncated and b.summary.truncated and not b.summary.from_cache
    assert len(harness.executed) == 2


def test_a_small_result_costs_one_worker_call_and_a_large_one_streams(tmp_path: Path) -> None:
    """Starting the query, reading the whole small result and closing the source happen
    in one worker call (each hop to a thread costs a point query much of its time); a
    result bigger than a gRPC message still comes in several reads, each read ahead."""
    harness = start_harness(tmp_path, max_message_bytes=256 * 1024)
    try:
        with FabricClient(harness.address, timeout=10) as client:
            client.query("shop", "SELECT COUNT(*) AS n FROM orders")  # builds the connector
            with counting_source_calls(harness.engine) as counting:
                small = client.query(
                    "shop", "SELECT id, amount FROM orders WHERE id = :id", {"id": 42}
                )
                assert small.to_pylist() == [{"id": 42, "amount": Decimal("52.50")}]
                assert counting.calls == 1
                counting.calls = 0
                big = client.query(
                    "shop",
                    "SELECT a.id, a.note, b.note AS other FROM orders a "
                    "JOIN orders b ON b.id <= 400 WHERE a.id <= 400",
                )
                assert big.num_rows == 160_000
                assert counting.calls >= 4  # about 3 MB in reads of 256 KiB or more
    finally:
        harness.gateway.stop()
        harness.store.close()
