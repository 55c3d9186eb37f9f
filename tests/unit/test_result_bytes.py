"""The result byte cap and byte-sized batches, seen from the source's side.

Against the in-memory double of the connector contract (tests/support/memory_connector):
how many of the source's batches the engine read, whether it closed the source, what
the caller got and was told, what was cached and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from fabric.errors import InvalidArgument
from fabric.query.engine import QueryEngine
from tests.unit.test_query_engine import CTX, ORDERS, Rig, collect, make_rig, query, run

ANSWER = ORDERS.select(["id", "amount"])  # 16 bytes of Arrow data a row, no nulls
ROW_BYTES = ANSWER.slice(0, 1).nbytes


def truncations(engine: QueryEngine, reason: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "fabric_results_truncated_total", {"reason": reason}
    )
    return 0.0 if value is None else value


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Rig]:
    """A rig whose gateway cap is 4 rows' worth of bytes (batches of 3 rows)."""
    with make_rig(tmp_path, max_result_bytes=4 * ROW_BYTES) as made:
        yield made


def test_a_result_past_the_byte_cap_ends_truncated_and_the_source_is_read_no_further(
    capped: Rig,
) -> None:
    capped.source.answer(ANSWER)
    table, summary = run(collect(capped.engine, query("SELECT id, amount FROM orders")))
    assert table.column("id").to_pylist() == [1, 2, 3, 4]
    assert (summary.rows, summary.truncated, summary.from_cache) == (4, True, False)
    [execution] = capped.source.executions
    # Batches of 3: the second was cut after its first row, the other two never read.
    assert execution.batches_read == 2
    assert execution.closes == 1
    assert truncations(capped.engine, "bytes") == 1 and truncations(capped.engine, "rows") == 0


def test_a_caller_may_ask_for_fewer_bytes_never_more(capped: Rig) -> None:
    capped.source.answer(ANSWER)
    table, summary = run(
        collect(capped.engine, query("SELECT id, amount FROM orders", max_bytes=2 * ROW_BYTES))
    )
    assert (table.num_rows, summary.truncated) == (2, True)
    table, summary = run(
        collect(capped.engine, query("SELECT id, amount FROM orders", max_bytes=1 << 40))
    )
    assert (table.num_rows, summary.truncated) == (4, True)
    for wrong in (0, -1):
        with pytest.raises(InvalidArgument, match="max_bytes must be positive"):
            run(collect(capped.engine, query("SELECT id FROM orders", max_bytes=wrong)))


def test_a_row_larger_than_the_cap_alone_ends_the_result_empty_and_truncated(
    capped: Rig,
) -> None:
    capped.source.answer(ANSWER)
    table, summary = run(
        collect(capped.engine, query("SELECT id, amount FROM orders", max_bytes=ROW_BYTES - 1))
    )
    assert table.num_rows == 0 and table.schema.names == ["id", "amount"]
    assert (summary.rows, summary.truncated) == (0, True)
    assert capped.source.executions[0].batches_read == 1


def test_a_result_within_the_cap_is_whole_and_not_truncated(tmp_path: Path) -> None:
    with make_rig(tmp_path, max_result_bytes=ANSWER.nbytes) as rig:
        rig.source.answer(ANSWER)
        table, summary = run(collect(rig.engine, query("SELECT id, amount FROM orders")))
        assert table.equals(ANSWER) and not summary.truncated
        assert truncations(rig.engine, "bytes") == 0


def test_a_result_cut_by_bytes_is_never_cached(capped: Rig) -> None:
    capped.source.answer(ANSWER)
    for _ in range(2):
        _, summary = run(
            collect(capped.engine, query("SELECT id, amount FROM orders", cache_ttl=60))
        )
        assert summary.truncated and not summary.from_cache
    assert len(capped.source.executions) == 2
    assert capped.engine.snapshot()["result_cache_entries"] == 0


def test_a_cached_result_larger_than_the_callers_cap_is_not_served(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        rig.source.answer(ANSWER)
        sql = "SELECT id, amount FROM orders"
        whole, summary = run(collect(rig.engine, query(sql, cache_ttl=60)))
        assert whole.num_rows == 10 and not summary.truncated
        again, summary = run(collect(rig.engine, query(sql, cache_ttl=60)))
        assert summary.from_cache and again.num_rows == 10
        small, summary = run(collect(rig.engine, query(sql, cache_ttl=60, max_bytes=ROW_BYTES)))
        assert (small.num_rows, summary.truncated, summary.from_cache) == (1, True, False)
        assert len(rig.source.executions) == 2


def test_a_paged_statement_stops_at_the_byte_cap(capped: Rig) -> None:
    capped.source.answer(ANSWER)

    async def page_through() -> tuple[list[int], bool]:
        page = await capped.engine.open_statement(
            CTX, query("SELECT id, amount FROM orders"), page_rows=3
        )
        ids = pa.ipc.open_stream(page.arrow_ipc).read_all().column("id").to_pylist()
        while not page.done:
            page = await capped.engine.fetch(CTX, page.statement_id, 3)
            ids += pa.ipc.open_stream(page.arrow_ipc).read_all().column("id").to_pylist()
        assert page.summary is not None
        return ids, page.summary.truncated

    assert run(page_through()) == ([1, 2, 3, 4], True)
    [execution] = capped.source.executions
    assert execution.batches_read == 2 and execution.closes == 1
    assert truncations(capped.engine, "bytes") == 1


def test_a_preview_stops_at_the_byte_cap(capped: Rig) -> None:
    capped.source.answer(ANSWER)
    request = run(capped.engine.preview_request(CTX, "shop", "orders", 0))
    table, summary = run(collect(capped.engine, request))
    assert (table.num_rows, summary.truncated) == (4, True)


def test_truncations_are_counted_by_reason(capped: Rig) -> None:
    capped.source.answer(ANSWER.select(["id"]))
    run(collect(capped.engine, query("SELECT id FROM orders", max_rows=2)))
    run(collect(capped.engine, query("SELECT id FROM orders")))  # 8 bytes a row: 8 rows fit
    assert truncations(capped.engine, "rows") == 1
    assert truncations(capped.engine, "bytes") == 1


def test_batches_are_sized_by_the_widest_row_the_query_can_make(tmp_path: Path) -> None:
    with make_rig(tmp_path, batch_rows=65_536, batch_bytes=1 << 20) as rig:
        rig.source.answer(ANSWER.select(["id"]))

        def batch_rows(sql: str, **params: object) -> int:
            run(collect(rig.engine, query(sql, params=params)))
            return rig.source.executions[-1].batch_rows

        plain = batch_rows("SELECT id FROM orders")
        # A long parameter, a long literal, or a padded cast, on every row.
        wide_parameter = batch_rows("SELECT id, :p AS p FROM orders", p="x" * 10_000)
        wide_literal = batch_rows(f"SELECT id, '{'y' * 10_000}' AS p FROM orders")
        padded = batch_rows("SELECT id, CAST(id AS char(60000)) AS p FROM orders")
        padded_inside = batch_rows(
            "SELECT s.p, s.p AS q FROM (SELECT CAST(id AS char(60000)) AS p FROM orders) s"
        )
    assert plain >= 1_000
    assert wide_parameter <= (1 << 20) // 40_000
    assert wide_literal <= (1 << 20) // 10_000
    assert padded <= (1 << 20) // 240_000
    assert padded_inside <= (1 << 20) // 480_000
    assert min(wide_parameter, wide_literal, padded, padded_inside) >= 1


def test_the_byte_cap_and_batch_size_come_from_the_settings() -> None:
    from fabric.config import Settings

    settings = Settings.from_env(
        {
            "FABRIC_MAX_RESULT_BYTES": "1024",
            "FABRIC_MAX_TYPE_LENGTH": "100",
            "FABRIC_BATCH_BYTES": "4096",
        }
    )
    assert (settings.max_result_bytes, settings.max_type_length, settings.batch_bytes) == (
        1024,
        100,
        4096,
    )
    defaults = Settings()
    assert defaults.max_result_bytes == 256 << 20 and defaults.max_type_length == 65_535
    for name in ("FABRIC_MAX_RESULT_BYTES", "FABRIC_MAX_TYPE_LENGTH", "FABRIC_BATCH_BYTES"):
        with pytest.raises(InvalidArgument, match="must be positive"):
            Settings.from_env({name: "0"})


def test_the_type_length_setting_reaches_the_compiler(tmp_path: Path) -> None:
    from fabric.errors import QueryRejected

    with make_rig(tmp_path, max_type_length=100) as rig:
        rig.source.answer(ANSWER.select(["id"]))
        run(collect(rig.engine, query("SELECT CAST(id AS varchar(100)) AS v FROM orders")))
        with pytest.raises(QueryRejected, match="between 1 and 100 on this gateway"):
            run(collect(rig.engine, query("SELECT CAST(id AS varchar(101)) AS v FROM orders")))
        assert len(rig.source.executions) == 1


def test_every_running_query_stops_at_its_own_cap(capped: Rig) -> None:
    capped.source.answer(ANSWER)

    async def together() -> list[int]:
        results = await asyncio.gather(
            *(
                collect(capped.engine, query(f"SELECT id, amount FROM orders WHERE id > {i}"))
                for i in range(-3, 0)
            )
        )
        return [table.num_rows for table, _ in results]

    assert run(together()) == [4, 4, 4]
    assert all(e.batches_read == 2 and e.closes == 1 for e in capped.source.executions)
