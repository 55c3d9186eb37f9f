"""Revocation reaches running work, seen from the source's side: an Execute stream and an
open statement opened before a change that narrows access stop at their next batch or
page with SelectionChanged, and nothing read after the change goes out; a change that
leaves them allowed does not stop them. Both ways a change is noticed are covered: the
purge an event causes (`purge_connection`), and the catalog version moving under a
running query with no event at all (the CLI writing the metadata store directly).

The engine runs over the in-memory connector double; the source's gate holds the
read-ahead at the source's door while the change is made, so the order of events is
fixed, not raced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.catalog.manager import CatalogManager
from fabric.errors import NotFound, SelectionChanged
from fabric.query.engine import QueryEngine
from fabric.query.runs import Summary
from tests.support.memory_connector import SourceGate
from tests.unit.test_query_engine import CTX, ORDERS, Rig, make_rig, query, run

IDS = ORDERS.select(["id", "amount"])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # One batch (3 rows, one message per row) per read: every batch is a step the
    # revocation can stop at.
    with make_rig(tmp_path, max_message_bytes=1) as made:
        yield made


def manager(rig: Rig) -> CatalogManager:
    return CatalogManager(rig.engine.store, lambda connection, stage: rig.source)


Change = Callable[[Rig], None]


def unselect_table(rig: Rig) -> None:
    rig.engine.store.unselect_entities("acme", "shop", ["orders"])


def narrow_the_columns(rig: Rig) -> None:
    manager(rig).select("acme", "shop", "development", "orders", ["id"])


def delete_the_connection(rig: Rig) -> None:
    rig.engine.store.delete_connection("acme", "shop")


def change_the_settings(rig: Rig) -> None:
    connection = rig.engine.store.get_connection("acme", "shop")
    rig.engine.store.update_connection(
        "acme",
        "shop",
        stages={"*": {"path": "elsewhere"}},
        expected_version=connection.version,
    )


NARROWING: dict[str, tuple[Change, str]] = {
    "unselect-table": (unselect_table, "entity 'orders' is no longer selected"),
    "narrower-selection": (narrow_the_columns, "column 'orders.amount' is no longer selected"),
    "connection-deleted": (delete_the_connection, "connection 'shop' was deleted"),
    "connection-updated": (change_the_settings, "the configuration of connection 'shop'"),
}


def unrelated_change(rig: Rig) -> None:
    """Another table selected, and the selected columns of orders selected again."""
    manager(rig).select("acme", "shop", "development", "payroll")
    manager(rig).select("acme", "shop", "development", "orders", ["id", "amount", "note"])


def rows_of(messages: list[bytes]) -> list[int]:
    if not messages:
        return []
    table = pa.ipc.open_stream(b"".join(messages)).read_all()
    return [int(v) for v in table.column("id").to_pylist()]


async def _pull(items: AsyncGenerator[bytes | Summary, None], out: list[bytes]) -> None:
    """Take messages until the first batch has come (schema, then one record batch)."""
    while len(out) < 2:
        item = await items.__anext__()
        assert isinstance(item, bytes)
        out.append(item)


def stream_through(rig: Rig, change: Change, *, event: bool) -> tuple[list[int], BaseException]:
    """Run a stream of orders, make `change` after its first batch (with the read-ahead
    held at the source), and return the ids the caller got and how the stream ended."""
    gate = SourceGate(passes=1)
    rig.source.answer(IDS, gate=gate)

    async def scenario() -> tuple[list[int], BaseException]:
        got: list[bytes] = []
        items = rig.engine.execute(CTX, query("SELECT id, amount FROM orders"))
        try:
            await _pull(items, got)
            while gate.held() == 0:  # the read-ahead is at the source's door
                await asyncio.sleep(0.001)
            await asyncio.to_thread(change, rig)
            if event:
                await asyncio.to_thread(rig.engine.purge_connection, "acme", "shop")
            gate.open()
            try:
                async for item in items:
                    if isinstance(item, bytes):
                        got.append(item)
            except SelectionChanged as error:
                return rows_of(got), error
            return rows_of(got), AssertionError("the stream ran to its end")
        finally:
            await items.aclose()

    return run(scenario())


@pytest.mark.parametrize("event", [True, False], ids=["event", "no-event"])
@pytest.mark.parametrize("change", NARROWING.keys())
def test_a_stream_stops_at_its_next_batch_and_sends_nothing_read_after(
    rig: Rig, change: str, event: bool
) -> None:
    make, reason = NARROWING[change]
    got, ended = stream_through(rig, make, event=event)
    assert isinstance(ended, SelectionChanged), ended
    assert ended.message.startswith("the selection changed: ") and reason in ended.message
    # Only rows of the batch read before the change reached the caller (with the event,
    # not even all of it: the messages still queued were held back too).
    assert got and got == [1, 2, 3][: len(got)]
    [execution] = rig.source.executions
    assert execution.cancels == 1 and execution.closes == 1  # stopped at the source
    assert rig.engine.snapshot()["purge_stream_revoked"] == 1
    assert len(rig.engine.running) == 0


@pytest.mark.parametrize("event", [True, False], ids=["event", "no-event"])
def test_a_change_that_leaves_the_stream_allowed_does_not_stop_it(rig: Rig, event: bool) -> None:
    got, ended = stream_through(rig, unrelated_change, event=event)
    assert isinstance(ended, AssertionError) and "ran to its end" in str(ended)
    assert got == list(range(1, 11))
    assert rig.engine.snapshot()["purge_stream_revoked"] == 0


def test_a_surviving_query_keeps_its_source_open_until_it_ends(rig: Rig) -> None:
    """A purge drops the connection's connectors, but not from under a query the change
    left allowed: the connector is closed when that query ends."""
    closed_during: list[int] = []

    def purge_and_look(r: Rig) -> None:
        unrelated_change(r)  # (the catalog manager closes the connectors it used)
        closed_during.append(r.source.closed)
        r.engine.purge_connection("acme", "shop")
        closed_during.append(r.source.closed)

    got, _ = stream_through(rig, purge_and_look, event=False)
    assert got == list(range(1, 11))
    before, after_purge = closed_during
    assert after_purge == before, "the purge did not close the connector under the query"

    async def settled() -> None:
        while rig.source.closed == before:  # closed in the engine's worker pool
            await asyncio.sleep(0.001)

    run(settled())
    assert rig.source.closed == before + 1


# -- open statements -------------------------------------------------------------------------


def open_statement(engine: QueryEngine) -> str:
    async def opened() -> str:
        page = await engine.open_statement(CTX, query("SELECT id, amount FROM orders"), 3)
        assert rows_of([page.arrow_ipc]) == [1, 2, 3] and not page.done
        return page.statement_id

    return run(opened())


def fetch(engine: QueryEngine, statement_id: str) -> Any:
    return run(engine.fetch(CTX, statement_id, 3))


@pytest.mark.parametrize("event", [True, False], ids=["event", "no-event"])
@pytest.mark.parametrize("change", NARROWING.keys())
def test_an_open_statement_stops_at_its_next_page(rig: Rig, change: str, event: bool) -> None:
    make, reason = NARROWING[change]
    rig.source.answer(IDS)
    statement = open_statement(rig.engine)
    make(rig)
    if event:
        rig.engine.purge_connection("acme", "shop")
        [execution] = rig.source.executions
        assert execution.closes == 1, "the purge released the source at once"
    with pytest.raises(SelectionChanged, match="the selection changed") as stopped:
        fetch(rig.engine, statement)
    assert reason in stopped.value.message
    # Told once; then the statement is simply gone.
    with pytest.raises(NotFound):
        fetch(rig.engine, statement)
    [execution] = rig.source.executions
    assert execution.closes == 1
    assert rig.engine.snapshot()["purge_statement_revoked"] == 1
    assert len(rig.engine.running) == 0


@pytest.mark.parametrize("event", [True, False], ids=["event", "no-event"])
def test_an_unrelated_change_leaves_an_open_statement_paging(rig: Rig, event: bool) -> None:
    rig.source.answer(IDS)
    statement = open_statement(rig.engine)
    unrelated_change(rig)
    if event:
        rig.engine.purge_connection("acme", "shop")
    pages = []
    while True:
        page = fetch(rig.engine, statement)
        pages.extend(rows_of([page.arrow_ipc]))
        if page.done:
            break
    assert pages == list(range(4, 11))


def test_a_revoked_statement_is_not_told_to_another_tenant_or_stage(rig: Rig) -> None:
    from dataclasses import replace

    rig.source.answer(IDS)
    statement = open_statement(rig.engine)
    unselect_table(rig)
    rig.engine.purge_connection("acme", "shop")
    for other in (replace(CTX, tenant="other"), replace(CTX, stage="production")):
        with pytest.raises(NotFound):
            run(rig.engine.fetch(other, statement, 3))
    with pytest.raises(SelectionChanged):
        fetch(rig.engine, statement)


# -- the idle limit is the fetch's own check ----------------------------------------------


def test_a_fetch_after_the_idle_limit_fails_whenever_the_sweeper_ran(rig: Rig) -> None:
    rig.source.answer(IDS)
    limit = rig.engine.open_statements.idle_limit
    statement = open_statement(rig.engine)
    rig.clock.advance(limit - 0.001)
    assert rows_of([fetch(rig.engine, statement).arrow_ipc]) == [4, 5, 6]
    rig.clock.advance(limit)  # no sweep has run
    with pytest.raises(NotFound, match="expired"):
        fetch(rig.engine, statement)
    [execution] = rig.source.executions
    # the source was closed once (statements read ahead into a buffer, so how many
    # batches it gave depends on the buffer, not on the pages fetched)
    assert execution.closes == 1
    assert rig.engine.open_statements.stats.purged_idle == 1
    assert rig.engine.open_statements.sweep() == 0  # nothing left for the sweeper
