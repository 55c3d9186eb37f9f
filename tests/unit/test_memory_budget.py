"""The memory budget: what results hold is counted on it (built, cached, evicted while
still being sent, read ahead by open statements), nothing stays counted or alive once
let go, and over it new work waits or is refused while what runs goes on."""

from __future__ import annotations

import asyncio
import gc
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.clock import FakeClock
from fabric.errors import ResourceExhausted
from fabric.results.cache import (
    ENTRY_OVERHEAD,
    MESSAGE_OVERHEAD,
    CachedResult,
    ResultCache,
    ResultKey,
)
from fabric.results.memory import GiveBackWhenIdle, MemoryBudget
from fabric.results.statements import StatementRegistry
from tests.unit.test_query_engine import CTX, ORDERS, collect, make_rig, query, run

SCHEMA = pa.schema([("x", pa.int64())])


def key(n: int) -> ResultKey:
    return ResultKey.build("t", "s", "c", 1, f"stmt{n}", {})


def built(cache: ResultCache, size: int) -> CachedResult:
    builder = cache.builder()
    assert builder.add(b"x" * size)
    result = builder.finish(1, SCHEMA)
    assert result is not None
    return result


def cost(size: int) -> int:
    return ENTRY_OVERHEAD + size + MESSAGE_OVERHEAD


def test_a_budget_refuses_what_it_has_no_room_for_and_tells_of_releases() -> None:
    budget = MemoryBudget(100)
    heard: list[int] = []
    budget.add_listener(lambda: heard.append(budget.in_use))
    assert budget.try_charge("reserved", 60)
    assert not budget.try_charge("cached", 50)
    assert not budget.try_charge("building", 30, within=20)
    assert budget.try_charge("cached", 40)
    budget.release("reserved", 60)
    assert heard == [40]
    assert budget.usage() == {"reserved": 0, "building": 0, "cached": 40, "buffered": 0}


def test_a_built_result_is_counted_while_built_then_as_cached() -> None:
    budget = MemoryBudget(1 << 20)
    cache = ResultCache(max_bytes=10_000, max_ttl=60, clock=FakeClock(), memory=budget)
    builder = cache.builder()
    assert builder.add(b"x" * 1000)
    assert budget.usage()["building"] == cost(1000)
    result = builder.finish(1, SCHEMA)
    assert result is not None and cache.put(key(1), result, 30)
    assert budget.usage() == {"reserved": 0, "building": 0, "cached": cost(1000), "buffered": 0}
    cache.clear()
    assert budget.in_use == 0


def test_a_result_the_cache_refuses_is_no_longer_counted() -> None:
    budget = MemoryBudget(1 << 20)
    cache = ResultCache(max_bytes=10_000, max_ttl=60, clock=FakeClock(), memory=budget)
    result = built(cache, 1000)
    assert not cache.put(key(1), result, 0)  # no lifetime: not stored
    assert budget.in_use == 0


def test_a_builder_without_room_lets_go_and_its_result_streams_uncached() -> None:
    budget = MemoryBudget(5_000)
    cache = ResultCache(max_bytes=4_000, max_ttl=60, clock=FakeClock(), memory=budget)
    assert budget.try_charge("reserved", 3_000)
    builder = cache.builder()
    assert builder.add(b"x" * 1_000)
    assert not builder.add(b"x" * 1_500)  # the budget is full: nothing held any more
    assert not builder.active and builder.finish(1, SCHEMA) is None
    assert budget.usage()["building"] == 0


def test_builders_together_hold_no_more_than_the_cache_could_keep() -> None:
    budget = MemoryBudget(1 << 30)
    cache = ResultCache(max_bytes=3_000, max_ttl=60, clock=FakeClock(), memory=budget)
    first, second = cache.builder(), cache.builder()
    assert first.add(b"x" * 2_000)
    assert not second.add(b"x" * 1_500)
    assert first.active and not second.active


def test_an_evicted_entry_stays_counted_until_its_last_reader_is_done() -> None:
    budget = MemoryBudget(1 << 20)
    cache = ResultCache(max_bytes=2 * cost(1000), max_ttl=60, clock=FakeClock(), memory=budget)
    cache.put(key(1), built(cache, 1000), 30)
    reading = cache.lease(key(1))
    assert reading is not None
    cache.put(key(2), built(cache, 1000), 30)
    cache.put(key(3), built(cache, 1000), 30)  # evicts the first entry, still being sent
    assert cache.get(key(1)) is None
    assert budget.usage()["cached"] == 3 * cost(1000)
    cache.done_reading(reading)
    assert budget.usage()["cached"] == 2 * cost(1000)


def test_an_evicted_entry_is_freed_at_once() -> None:
    cache = ResultCache(max_bytes=cost(1000), max_ttl=3600, clock=FakeClock())
    message = b"x" * 1000
    unheld = sys.getrefcount(message)
    builder = cache.builder()
    builder.add(message)
    result = builder.finish(1, SCHEMA)
    assert result is not None
    cache.put(key(1), result, 3600)
    del builder, result
    assert sys.getrefcount(message) > unheld  # the cache holds it
    cache.put(key(2), built(cache, 1000), 3600)  # evicts it long before it expires
    gc.collect()
    assert sys.getrefcount(message) == unheld, "an evicted result was kept until its expiry"


def test_a_statement_buffer_holds_a_small_result_and_releases_its_source_at_once(
    tmp_path: Path,
) -> None:
    with make_rig(tmp_path) as rig:
        rig.source.answer(ORDERS.select(["id"]))

        async def body() -> None:
            page = await rig.engine.open_statement(CTX, query("SELECT id FROM orders"), page_rows=2)
            assert not page.done
            [execution] = rig.source.executions
            # Every row is read ahead: the source is closed, nothing was cancelled.
            assert (execution.closes, execution.cancels) == (1, 0)
            assert rig.engine.memory.usage()["buffered"] > 0
            assert rig.engine.admission.stats.running == 0
            ids: list[int] = []
            while True:
                fetched = await rig.engine.fetch(CTX, page.statement_id, 3)
                ids.extend(
                    pa.ipc.open_stream(fetched.arrow_ipc).read_all().column("id").to_pylist()
                )
                if fetched.done:
                    break
            assert ids == list(range(3, 11))

        run(body())
        assert rig.engine.memory.in_use == 0


def test_a_closed_statement_gives_its_buffer_back(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        rig.source.answer(ORDERS.select(["id"]))

        async def body() -> None:
            page = await rig.engine.open_statement(CTX, query("SELECT id FROM orders"), page_rows=2)
            assert rig.engine.memory.usage()["buffered"] > 0
            await rig.engine.close_statement(CTX, page.statement_id)

        run(body())
        assert rig.engine.memory.in_use == 0


def test_over_the_budget_a_new_query_waits_then_is_refused(tmp_path: Path) -> None:
    with make_rig(
        tmp_path,
        memory_budget=3 << 20,
        cache_max_bytes=1 << 20,
        query_memory=2 << 20,
        admission_wait=0.2,
    ) as rig:
        gate = rig.source.answer(ORDERS.select(["id"])).gate
        gate.close()

        async def body() -> None:
            running = asyncio.ensure_future(collect(rig.engine, query("SELECT id FROM orders")))
            while not gate.arrived.is_set():
                await asyncio.sleep(0.01)  # polled; the test's own deadline bounds it
            with pytest.raises(ResourceExhausted) as refused:
                await collect(rig.engine, query("SELECT id, amount FROM orders"))
            assert refused.value.retry_after is not None
            assert "memory budget" in refused.value.message
            gate.open()
            table, summary = await running  # what ran went on, whole
            assert table.num_rows == 10 and not summary.truncated

        run(body())
        assert len(rig.source.executions) == 1  # the refused query never reached it
        assert rig.engine.snapshot()["admission_refused_memory"] == 1


def test_nothing_stays_counted_after_queries_of_every_kind(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        rig.source.answer(ORDERS.select(["id"]))

        async def body() -> None:
            await collect(rig.engine, query("SELECT id FROM orders"))
            await collect(rig.engine, query("SELECT id FROM orders", cache_ttl=30))
            await collect(rig.engine, query("SELECT id FROM orders", cache_ttl=30))  # a hit
            page = await rig.engine.open_statement(
                CTX, query("SELECT id FROM orders", cache_ttl=30), page_rows=2
            )
            await rig.engine.close_statement(CTX, page.statement_id)

        run(body())
        usage = rig.engine.memory.usage()
        assert usage == {
            "reserved": 0,
            "building": 0,
            "cached": rig.engine.results.stats.bytes_held,
            "buffered": 0,
        }
        rig.engine.results.clear()
        assert rig.engine.memory.in_use == 0


def test_statements_over_a_share_are_refused_with_a_retry_hint() -> None:
    registry: StatementRegistry[Any] = StatementRegistry(
        max_open=10, max_per_tenant=3, max_per_principal=2
    )
    closed: list[int] = []

    def open_(tenant: str, principal: str) -> Any:
        return registry.open(
            tenant=tenant,
            stage="s",
            principal=principal,
            payload=None,
            close_fn=lambda: closed.append(1),
        )

    open_("acme", "a")
    open_("acme", "a")
    with pytest.raises(ResourceExhausted) as principal_full:
        open_("acme", "a")
    assert principal_full.value.retry_after is not None
    assert closed == [1]  # what it was given is released
    open_("acme", "b")
    with pytest.raises(ResourceExhausted):
        open_("acme", "c")
    open_("globex", "a")
    assert registry.stats.refused == {"gateway": 0, "tenant": 1, "principal": 1}


def test_memory_is_given_back_once_idle_and_not_once_per_query() -> None:
    executor = ThreadPoolExecutor(1)
    running = [0]
    asked = asyncio.Event()

    def busy() -> bool:
        asked.set()
        return running[0] > 0

    giver = GiveBackWhenIdle(executor, busy, interval=0.05)

    async def body() -> None:
        giver.bind(asyncio.get_running_loop())
        running[0] = 1  # a query starts before the give-back comes up
        for _ in range(3):  # three ended in a burst
            giver.idle()
        await asyncio.wait_for(asked.wait(), 5)
        assert giver.given_back == 0  # busy: left for the next idle moment
        running[0] = 0
        asked.clear()
        giver.idle()
        giver.idle()
        await asyncio.wait_for(asked.wait(), 5)
        assert giver.given_back == 1
        giver.stop()
        giver.idle()

    try:
        run(body())
    finally:
        executor.shutdown(wait=True)
    assert giver.given_back == 1
