"""Unit tests of the compiled-statement cache: hits, misses, keys, purges, LRU, threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from connectors.base import ParamStyle
from fabric.errors import InternalError, QueryRejected
from fabric.model import CatalogSnapshot
from fabric.query.compiler import CompiledStatement, StatementCompiler
from fabric.query.statement_cache import StatementCache
from tests.unit.test_compiler_golden import sales_catalog


class CountingCompiler(StatementCompiler):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compile(self, sql: str, catalog: CatalogSnapshot, **kwargs: Any) -> CompiledStatement:
        self.calls += 1
        return super().compile(sql, catalog, **kwargs)


def lookup(
    cache: StatementCache,
    sql: str,
    *,
    catalog: CatalogSnapshot | None = None,
    tenant: str = "acme",
    connection: str = "sales",
    max_rows: int = 100,
) -> CompiledStatement:
    return cache.get_or_compile(
        tenant=tenant,
        connection=connection,
        sql=sql,
        catalog=catalog or sales_catalog(),
        dialect="postgres",
        param_style=ParamStyle.FORMAT,
        max_rows=max_rows,
    )


def test_same_sql_different_params_is_one_compile() -> None:
    compiler = CountingCompiler()
    cache = StatementCache(compiler)
    sql = "SELECT id FROM orders WHERE status = :s"
    first = lookup(cache, sql)
    second = lookup(cache, sql)
    assert first is second
    assert first.bind({"s": "a"}) == ("a",) and second.bind({"s": "b"}) == ("b",)
    assert compiler.calls == 1
    assert (cache.hits, cache.misses, cache.size) == (1, 1, 1)


def test_catalog_version_change_misses() -> None:
    compiler = CountingCompiler()
    cache = StatementCache(compiler)
    lookup(cache, "SELECT id FROM orders", catalog=sales_catalog(version=1))
    lookup(cache, "SELECT id FROM orders", catalog=sales_catalog(version=2))
    assert compiler.calls == 2 and cache.misses == 2 and cache.hits == 0


def test_max_rows_is_part_of_the_key() -> None:
    cache = StatementCache(StatementCompiler())
    assert lookup(cache, "SELECT id FROM orders", max_rows=10).row_limit == 11
    assert lookup(cache, "SELECT id FROM orders", max_rows=20).row_limit == 21


def test_purge_connection_drops_only_that_connection() -> None:
    cache = StatementCache(StatementCompiler())
    other = CatalogSnapshot("acme", "crm", 1, sales_catalog().entities)
    lookup(cache, "SELECT id FROM orders", catalog=sales_catalog(version=1))
    lookup(cache, "SELECT id FROM orders", catalog=sales_catalog(version=2))
    lookup(cache, "SELECT id FROM orders", catalog=other, connection="crm")
    assert cache.purge_connection("acme", "sales") == 2
    assert cache.size == 1
    assert cache.purge_connection("acme", "sales") == 0
    lookup(cache, "SELECT id FROM orders", catalog=other, connection="crm")
    assert cache.hits == 1


def test_clear() -> None:
    cache = StatementCache(StatementCompiler())
    lookup(cache, "SELECT 1")
    cache.clear()
    assert cache.size == 0
    assert cache.purge_connection("acme", "sales") == 0


def test_lru_eviction() -> None:
    cache = StatementCache(StatementCompiler(), max_entries=2)
    lookup(cache, "SELECT 1")
    lookup(cache, "SELECT 2")
    lookup(cache, "SELECT 1")  # refresh: 2 is now the oldest
    lookup(cache, "SELECT 3")
    assert cache.size == 2
    misses = cache.misses
    lookup(cache, "SELECT 1")
    assert cache.misses == misses
    lookup(cache, "SELECT 2")
    assert cache.misses == misses + 1
    assert cache.purge_connection("acme", "sales") == 2


def test_rejections_are_not_cached() -> None:
    cache = StatementCache(StatementCompiler())
    for _ in range(2):
        with pytest.raises(QueryRejected):
            lookup(cache, "SELECT * FROM payroll")
    assert cache.size == 0 and cache.misses == 2


def test_catalog_of_another_connection_is_refused() -> None:
    cache = StatementCache(StatementCompiler())
    with pytest.raises(InternalError):
        lookup(cache, "SELECT 1", connection="crm")


def test_concurrent_lookups_share_one_entry() -> None:
    cache = StatementCache(StatementCompiler())
    results: list[CompiledStatement] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            results.append(lookup(cache, "SELECT id FROM orders WHERE id = :id"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.size == 1
    assert cache.hits + cache.misses == 400
    assert len({id(result) for result in results[-10:]}) == 1


def test_stages_with_their_own_tables_do_not_share_a_statement() -> None:
    """Two stages at one catalog version may map an entity to different tables: the
    stage is part of the key, and each stage's statement names its own table."""
    from dataclasses import replace
    from types import MappingProxyType

    base = sales_catalog()
    orders = replace(
        base.entities["orders"],
        stage_tables=MappingProxyType({"production": ("sales_prod", "orders_p")}),
    )
    catalog = replace(base, entities=MappingProxyType({**base.entities, "orders": orders}))
    compiler = CountingCompiler()
    cache = StatementCache(compiler)
    sql = "SELECT id FROM orders"
    development = lookup(cache, sql, catalog=catalog.for_stage("development"))
    production = lookup(cache, sql, catalog=catalog.for_stage("production"))
    again = lookup(cache, sql, catalog=catalog.for_stage("production"))
    assert compiler.calls == 2 and again is production
    assert '"sales_prod"."orders_p"' in production.sql
    assert "orders_p" not in development.sql and '"orders"' in development.sql
