"""QueryEngine against an in-memory double of the connector contract.

The engine's own work, seen from the source's side: what it asks the source to run,
what it sends the caller, when it cancels and releases a query, what it caches, how it
pages. The metadata store is the real SQLite one; time is a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.catalog.manager import CatalogManager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.clock import FakeClock
from fabric.config import Settings
from fabric.context import RequestContext, Role
from fabric.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    QueryRejected,
    SourceQueryError,
)
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.runs import Summary
from tests.support.memory_connector import MemoryConnector, SourceGate

CTX = RequestContext(tenant="acme", stage="development", role=Role.APP, principal="app")
ORDERS = pa.table(
    {
        "id": pa.array(range(1, 11), pa.int64()),
        "amount": pa.array([float(i) * 1.5 for i in range(1, 11)], pa.float64()),
        "note": pa.array([f"n{i}" for i in range(1, 11)], pa.string()),
    }
)
SECRETS = pa.table({"id": pa.array([1], pa.int64()), "salary": pa.array([9.0], pa.float64())})


@dataclass
class Rig:
    engine: QueryEngine
    source: MemoryConnector
    clock: FakeClock


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as made:
        yield made


@contextmanager
def make_rig(tmp_path: Path, **settings_overrides: Any) -> Iterator[Rig]:
    source = MemoryConnector({"orders": ORDERS, "payroll": SECRETS})
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = CatalogManager(store, lambda connection, stage: source)
    manager.create_connection("acme", "shop", "duckdb", {"*": {"path": "memory"}})
    manager.select("acme", "shop", "development", "orders", ["id", "amount"])
    clock = FakeClock()
    defaults: dict[str, Any] = {"metrics_port": 0, "batch_rows": 3, "max_rows": 1_000}
    settings = Settings(home=tmp_path, **{**defaults, **settings_overrides})
    engine = QueryEngine(store, settings, clock=clock, connector_factory=lambda *_: source)
    try:
        yield Rig(engine, source, clock)
    finally:
        engine.close()
        store.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def collect(engine: QueryEngine, request: QueryRequest) -> tuple[pa.Table, Summary]:
    messages: list[bytes] = []
    summary: Summary | None = None
    async for item in engine.execute(CTX, request):
        if isinstance(item, Summary):
            summary = item
        else:
            messages.append(item)
    assert summary is not None, "a result always ends with its summary"
    return pa.ipc.open_stream(b"".join(messages)).read_all(), summary


def query(sql: str, **options: Any) -> QueryRequest:
    return QueryRequest("shop", sql, **options)


# -- streaming and binding ---------------------------------------------------------------


def test_result_streams_whole_with_its_summary_and_parameters_are_bound(rig: Rig) -> None:
    answer = ORDERS.select(["id", "amount"])
    rig.source.answer(answer)
    table, summary = run(
        collect(
            rig.engine, query("SELECT id, amount FROM orders WHERE id > :low", params={"low": 2})
        )
    )
    assert table.equals(answer)
    assert (summary.rows, summary.truncated, summary.from_cache) == (10, False, False)
    [execution] = rig.source.executions
    assert execution.params == (2,)
    assert "?" in execution.sql and ":low" not in execution.sql and "2" not in execution.sql
    assert execution.batch_rows == 3
    assert execution.timeout is not None and execution.timeout > 0
    assert execution.closes == 1 and execution.cancels == 0


def test_more_rows_than_max_rows_are_cut_and_reported_truncated(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    table, summary = run(collect(rig.engine, query("SELECT id FROM orders", max_rows=4)))
    assert table.column("id").to_pylist() == [1, 2, 3, 4]
    assert (summary.rows, summary.truncated) == (4, True)
    # The source is asked for one row more than the caller may get: that is how the
    # engine knows the result was cut.
    assert "LIMIT 5" in rig.source.executions[0].sql
    assert rig.source.executions[0].closes == 1


def test_a_column_or_table_outside_the_selection_never_reaches_the_source(rig: Rig) -> None:
    rig.source.answer(ORDERS)
    for sql in ("SELECT note FROM orders", "SELECT * FROM payroll", "SELECT 1; SELECT 2"):
        with pytest.raises(QueryRejected):
            run(collect(rig.engine, query(sql)))
    assert rig.source.executions == []


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_rows": 0}, "max_rows"), ({"cache_ttl": -1.0}, "cache_ttl")],
)
def test_bad_limits_are_invalid_arguments(rig: Rig, options: dict[str, Any], message: str) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    with pytest.raises(InvalidArgument, match=message):
        run(collect(rig.engine, query("SELECT id FROM orders", **options)))
    assert rig.source.executions == []


def test_a_deadline_already_passed_starts_nothing(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))

    async def late() -> None:
        async for _ in rig.engine.execute(CTX, query("SELECT id FROM orders"), deadline=0.0):
            pass

    with pytest.raises(DeadlineExceeded):
        run(late())
    assert rig.source.executions == []


def test_unknown_connection_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound):
        run(collect(rig.engine, QueryRequest("nope", "SELECT 1")))


# -- failures and callers that go away ---------------------------------------------------


def test_source_error_mid_stream_reaches_the_caller_and_releases_the_query(rig: Rig) -> None:
    rig.source.answer(
        ORDERS.select(["id"]), fail_at_batch=2, error=SourceQueryError("the source failed")
    )
    with pytest.raises(SourceQueryError):
        run(collect(rig.engine, query("SELECT id FROM orders", cache_ttl=60)))
    [execution] = rig.source.executions
    assert execution.closes == 1
    # Nothing partial was cached: the next call runs at the source again.
    rig.source.answer(ORDERS.select(["id"]))
    _, summary = run(collect(rig.engine, query("SELECT id FROM orders", cache_ttl=60)))
    assert not summary.from_cache and len(rig.source.executions) == 2


def test_a_caller_that_goes_away_mid_stream_cancels_and_releases_the_source(
    tmp_path: Path,
) -> None:
    # Messages of one batch each, and a source that holds after its second batch: the
    # caller leaves while the engine is reading ahead.
    with make_rig(tmp_path, max_message_bytes=1) as rig:
        gate = SourceGate(open_=True, passes=2)
        rig.source.answer(ORDERS.select(["id"]), gate=gate)
        run(leave_after_first_message(rig))
        [execution] = rig.source.executions
    assert execution.cancels == 1
    assert execution.closes == 1
    # Stopped before its end (4 batches): the read-ahead may or may not have taken the
    # second batch when the caller left, never more.
    assert execution.batches_read in (1, 2)


def test_stopping_a_query_never_waits_behind_other_work(tmp_path: Path) -> None:
    # One worker thread, held by the query's own read-ahead at a source that waits: the
    # stop (cancel, then close) runs on its own lane, so it reaches the source at once.
    with make_rig(tmp_path, max_message_bytes=1, worker_threads=1) as rig:
        gate = SourceGate(open_=True, passes=1)  # the first batch, then the read waits
        rig.source.answer(ORDERS.select(["id"]), gate=gate)
        started = time.monotonic()
        run(leave_after_first_message(rig))
        assert time.monotonic() - started < 5.0
        [execution] = rig.source.executions
    assert execution.cancels == 1 and execution.closes == 1


async def leave_after_first_message(rig: Rig) -> None:
    stream = rig.engine.execute(CTX, query("SELECT id FROM orders"))
    first = await stream.__anext__()
    assert isinstance(first, bytes)
    await stream.aclose()


def test_a_caller_cancelled_while_the_source_is_slow_to_start_cancels_it(rig: Rig) -> None:
    gate = SourceGate(open_=False)
    rig.source.answer(ORDERS.select(["id"]), gate=gate)

    async def give_up() -> None:
        task = asyncio.ensure_future(collect(rig.engine, query("SELECT id FROM orders")))
        await asyncio.get_running_loop().run_in_executor(None, gate.arrived.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(give_up())
    [execution] = rig.source.executions
    assert execution.cancels >= 1
    assert execution.closes == 1
    assert execution.batches_read == 0


def test_a_caller_cancelled_while_a_lazy_source_computes_its_first_rows_cancels_it(
    rig: Rig,
) -> None:
    """A connector that runs its query when the reader is first asked for is stoppable
    then: the run exists before its reader is opened."""
    gate = SourceGate(open_=False)
    rig.source.answer(ORDERS.select(["id"]), gate=gate, lazy=True)

    async def give_up() -> None:
        task = asyncio.ensure_future(collect(rig.engine, query("SELECT id FROM orders")))
        await asyncio.get_running_loop().run_in_executor(None, gate.arrived.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(give_up())
    [execution] = rig.source.executions
    assert execution.cancels >= 1
    assert execution.closes == 1
    assert execution.batches_read == 0


def test_the_query_timeout_ends_the_call_whatever_the_source_does(tmp_path: Path) -> None:
    # A source that sends nothing: the call still ends at the timeout (and a short
    # grace), and the query is stopped there in the background.
    with make_rig(tmp_path, query_timeout=0.5) as rig:
        gate = SourceGate(open_=False)
        rig.source.answer(ORDERS.select(["id"]), gate=gate)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"0\.5s"):
            run(collect(rig.engine, query("SELECT id FROM orders")))
        assert time.monotonic() - started < 0.5 + 1.5
        assert rig.engine.settle(10)
        [execution] = rig.source.executions
        assert execution.cancels >= 1 and execution.closes == 1
        assert rig.engine.snapshot()["source_calls_overrun"] == 1


# -- the result cache --------------------------------------------------------------------


def test_cached_result_is_served_from_memory_until_its_lifetime_passes(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    sql = "SELECT id FROM orders WHERE id > :low"
    first, summary = run(collect(rig.engine, query(sql, params={"low": 1}, cache_ttl=30)))
    again, cached = run(collect(rig.engine, query(sql, params={"low": 1}, cache_ttl=30)))
    assert not summary.from_cache and cached.from_cache
    assert again.equals(first) and cached.rows == 10
    assert len(rig.source.executions) == 1

    run(collect(rig.engine, query(sql, params={"low": 2}, cache_ttl=30)))
    assert len(rig.source.executions) == 2, "other parameter values are another result"

    rig.clock.advance(31)
    _, expired = run(collect(rig.engine, query(sql, params={"low": 1}, cache_ttl=30)))
    assert not expired.from_cache and len(rig.source.executions) == 3


def test_a_truncated_result_is_never_cached(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    for _ in range(2):
        _, summary = run(
            collect(rig.engine, query("SELECT id FROM orders", max_rows=2, cache_ttl=30))
        )
        assert summary.truncated and not summary.from_cache
    assert len(rig.source.executions) == 2


def test_identical_cacheable_queries_in_flight_run_once(rig: Rig) -> None:
    gate = SourceGate(open_=False)
    rig.source.answer(ORDERS.select(["id"]), gate=gate)
    request = query("SELECT id FROM orders", cache_ttl=30)

    async def three_callers() -> list[tuple[pa.Table, Summary]]:
        tasks = [asyncio.ensure_future(collect(rig.engine, request)) for _ in range(3)]
        await asyncio.get_running_loop().run_in_executor(None, gate.arrived.wait, 10)
        gate.open()
        return list(await asyncio.gather(*tasks))

    results = run(three_callers())
    assert len(rig.source.executions) == 1
    assert [summary.from_cache for _, summary in results].count(False) == 1
    assert all(table.column("id").to_pylist() == list(range(1, 11)) for table, _ in results)
    # The two others waited for the one run (or, had it finished first, found its entry).
    assert rig.engine.snapshot()["result_cache_hits"] == 2


# -- paging ------------------------------------------------------------------------------


def test_pages_follow_each_other_and_a_consumed_statement_is_gone(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))

    async def page_through() -> list[int]:
        page = await rig.engine.open_statement(CTX, query("SELECT id FROM orders"), page_rows=4)
        ids = _ids(page.arrow_ipc)
        sizes = [page.rows]
        while not page.done:
            page = await rig.engine.fetch(CTX, page.statement_id, 4)
            ids += _ids(page.arrow_ipc)
            sizes.append(page.rows)
        assert page.summary is not None and page.summary.rows == 10
        with pytest.raises(NotFound):
            await rig.engine.fetch(CTX, page.statement_id, 4)
        assert sizes == [4, 4, 2]
        return ids

    assert run(page_through()) == list(range(1, 11))
    assert rig.source.executions[0].closes == 1
    assert rig.source.executions[0].cancels == 0


def test_closing_a_statement_early_cancels_and_releases_its_source(tmp_path: Path) -> None:
    # A buffer too small for the result: the statement keeps its source between pages.
    with make_rig(tmp_path, statement_buffer_bytes=1) as rig:
        rig.source.answer(ORDERS.select(["id"]))

        async def open_then_close() -> None:
            page = await rig.engine.open_statement(CTX, query("SELECT id FROM orders"), page_rows=2)
            assert not page.done and page.rows == 2
            await rig.engine.close_statement(CTX, page.statement_id)
            with pytest.raises(NotFound):
                await rig.engine.fetch(CTX, page.statement_id, 2)

        run(open_then_close())
        [execution] = rig.source.executions
        assert (execution.cancels, execution.closes) == (1, 1)


def test_a_statement_belongs_to_its_tenant(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    other = RequestContext(tenant="other", stage="development", role=Role.APP, principal="x")

    async def peek() -> None:
        page = await rig.engine.open_statement(CTX, query("SELECT id FROM orders"), page_rows=2)
        with pytest.raises(NotFound):
            await rig.engine.fetch(other, page.statement_id, 2)
        await rig.engine.close_statement(CTX, page.statement_id)

    run(peek())


# -- preview and purges ------------------------------------------------------------------


def test_preview_reads_only_selected_entities(rig: Rig) -> None:
    request = run(rig.engine.preview_request(CTX, "shop", "orders", 5))
    assert (request.sql, request.max_rows) == ("SELECT * FROM orders", 5)
    for entity in ("payroll", "orders; DROP TABLE x", ""):
        with pytest.raises(NotFound):
            run(rig.engine.preview_request(CTX, "shop", entity, 5))


def test_purging_a_connection_drops_what_the_engine_holds_for_it(rig: Rig) -> None:
    rig.source.answer(ORDERS.select(["id"]))
    run(collect(rig.engine, query("SELECT id FROM orders", cache_ttl=60)))
    assert rig.engine.snapshot()["result_cache_entries"] == 1
    closed_before = rig.source.closed
    dropped = rig.engine.purge_connection("acme", "shop")
    assert dropped["compiled"] == 1 and dropped["results"] == 1 and dropped["sources"] >= 1
    assert rig.engine.settle(10)  # connectors close on the control lane
    assert rig.source.closed > closed_before
    assert rig.engine.snapshot()["result_cache_entries"] == 0
    _, summary = run(collect(rig.engine, query("SELECT id FROM orders", cache_ttl=60)))
    assert not summary.from_cache


def _ids(ipc: bytes) -> list[int]:
    return pa.ipc.open_stream(ipc).read_all().column("id").to_pylist()
