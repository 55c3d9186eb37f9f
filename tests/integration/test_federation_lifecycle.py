"""A federated query's life: EXPLAIN over gRPC and the CLI's client, deadlines and
cancellation reaching every source and DuckDB, the spill directory wiped."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.cli import main as cli_main
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.context import DEFAULT_TENANT
from fabric.errors import Cancelled, DeadlineExceeded
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.federation.spill import OWNER_FILE
from fabric.terminal.query import explain_text
from tests.integration.federation_support import CTX, ORDERS_PER_CUSTOMER, Sources, sources

JOIN = (
    "SELECT c.c_name, o.o_orderkey FROM mdb.customer c "
    "JOIN pg.orders o ON o.o_custkey = c.c_custkey WHERE c.c_custkey <= :last"
)
SLOW_AT_POSTGRES = (
    # A subquery sent whole to PostgreSQL that runs for minutes (8000^3 rows grouped).
    "SELECT c.c_name, s.n FROM mdb.customer c JOIN (SELECT a.l_orderkey AS k, count(*) AS n "
    "FROM pg.lineitem a, pg.lineitem b, pg.lineitem x GROUP BY a.l_orderkey) s "
    "ON s.k = c.c_custkey"
)
SLOW_IN_DUCKDB = (
    # Two PostgreSQL scans (no condition links them) and a customer scan: DuckDB joins
    # 8000 x 8000 x 200 rows.
    "SELECT count(*) AS n FROM pg.lineitem a, pg.lineitem b, mdb.customer c "
    "WHERE a.l_quantity < c.c_custkey AND b.l_quantity < c.c_custkey"
)


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Sources]:
    yield from sources(tmp_path)


@pytest.fixture
def fed_default(tmp_path: Path) -> Iterator[Sources]:
    """The sources in the default tenant (the local administrator's, over gRPC)."""
    yield from sources(tmp_path, tenant=DEFAULT_TENANT)


def _active(url: str, marker: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            [f"%{marker}%"],
        ).fetchone()
    return int(row[0]) if row else 0


def _until(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _spilled(fed: Sources) -> list[Path]:
    """What the engine's queries left in its spill area (its lock file aside)."""
    area = fed.engine.spill_area.path
    return [p for p in area.rglob("*") if p.name != OWNER_FILE]


def test_explain_over_grpc_shows_each_part_and_what_it_moved(
    fed_default: Sources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fed = fed_default
    background = BackgroundGateway(
        assemble_gateway(fed.engine, context_provider=local_admin_context)
    ).start()
    try:
        with FabricClient(background.address, timeout=60) as client:
            rows = client.query("", JOIN, {"last": 5})
            plan = client.explain("", JOIN, {"last": 5})
            analyzed = client.explain("", JOIN, {"last": 5}, analyze=True)
            single = client.explain("pg", "SELECT o_orderkey FROM orders")
        # The CLI: `fabric query --explain analyze '' SQL`.
        for name in [n for n in os.environ if n.startswith("FABRIC_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "cli"))
        argv = ["query", "--explain", "analyze", "--address", background.address]
        code = cli_main([*argv, "-p", "last=2", "", JOIN])
        shown = capsys.readouterr().out
    finally:
        background.stop()
    assert rows.num_rows == 5 * ORDERS_PER_CUSTOMER
    assert plan.federated and not plan.analyzed
    by_source = {part.connection: part for part in plan.parts}
    assert set(by_source) == {"pg", "mdb", ""}
    assert "`c`.`c_custkey` <= %s" in by_source["mdb"].sql
    assert not by_source["pg"].HasField("rows")
    assert by_source["pg"].dynamic_filter.startswith("planned")
    moved = {part.connection: part for part in analyzed.parts}
    assert moved["mdb"].rows == 5 and moved["pg"].rows == 5 * ORDERS_PER_CUSTOMER
    assert moved[""].rows == 5 * ORDERS_PER_CUSTOMER and moved[""].bytes > 0
    assert moved["pg"].dynamic_filter == "applied (5 keys)"
    assert not single.federated and single.parts[0].connection == "pg"
    text = explain_text(analyzed)
    assert "== duckdb (DuckDB)" in text and "moved: 100 rows" in text
    assert code == 0
    assert "-- federated plan" in shown and "== duckdb (DuckDB)" in shown
    assert "moved: 40 rows" in shown and "dynamic filter: applied (2 keys)" in shown


def test_a_deadline_stops_the_source_statement(fed: Sources) -> None:
    marker = f'"{fed.pg_schema}"."lineitem" AS "x"'
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(_drain(fed.engine, SLOW_AT_POSTGRES, time.monotonic() + 2.0))
    assert time.monotonic() - started < 10
    assert _until(lambda: _active(fed.pg_url, marker) == 0)
    assert fed.engine.settle(30)
    assert _spilled(fed) == []


def test_a_caller_that_goes_away_cancels_the_source_statement(fed: Sources) -> None:
    marker = f'"{fed.pg_schema}"."lineitem" AS "x"'

    async def go_away() -> None:
        task = asyncio.create_task(_drain(fed.engine, SLOW_AT_POSTGRES, None))
        running = await asyncio.to_thread(_until, lambda: _active(fed.pg_url, marker) > 0)
        assert running
        task.cancel()
        with pytest.raises((asyncio.CancelledError, Cancelled)):
            await task

    asyncio.run(go_away())
    assert _until(lambda: _active(fed.pg_url, marker) == 0)
    assert fed.engine.settle(30)


def test_a_deadline_interrupts_duckdb(fed: Sources) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(_drain(fed.engine, SLOW_IN_DUCKDB, time.monotonic() + 2.0))
    assert time.monotonic() - started < 10
    # The interrupted DuckDB work ends and the run is closed (its spill dir gone).
    assert fed.engine.settle(30)
    assert _until(lambda: _spilled(fed) == [])


def test_spill_files_a_crash_left_are_wiped_at_start_up_and_a_live_gateways_are_not(
    tmp_path: Path,
) -> None:
    from fabric.catalog.metadata.sqlite import SqliteMetadataStore

    settings = Settings(home=tmp_path, metrics_port=0)
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    # A gateway that is running (its area is locked) and one that crashed (unlocked).
    running = QueryEngine(store, settings)
    running_spill = running.spill_area.query_dir()
    running_spill.mkdir()
    (running_spill / "duckdb_temp_block-0.block").write_bytes(b"rows being joined")
    left = settings.federation_temp_root / "0123abcd"
    left.mkdir(parents=True)
    (left / OWNER_FILE).touch()
    (left / "duckdb_temp_block-0.block").write_bytes(b"rows of a source")
    try:
        starting = QueryEngine(store, settings)  # shares FABRIC_HOME, as replicas may
        try:
            assert not left.exists()
            assert (running_spill / "duckdb_temp_block-0.block").read_bytes() == (
                b"rows being joined"
            )
            assert starting.spill_area.path.exists()
        finally:
            starting.close()
        assert not starting.spill_area.path.exists()
        assert running_spill.exists()
    finally:
        running.close()
        store.close()
    assert list(settings.federation_temp_root.iterdir()) == []


async def _drain(engine: QueryEngine, sql: str, deadline: float | None) -> None:
    async for _ in engine.execute(CTX, QueryRequest("", sql), deadline):
        pass


def test_a_federated_result_pages_and_is_cached_until_any_of_its_connections_is_purged(
    fed: Sources,
) -> None:
    request = QueryRequest("", JOIN, {"last": 10}, cache_ttl=60)

    async def pages() -> list[int]:
        first = await fed.engine.open_statement(CTX, request, page_rows=64)
        rows = [first.rows]
        statement, done = first.statement_id, first.done
        while not done:
            page = await fed.engine.fetch(CTX, statement, 64)
            rows.append(page.rows)
            done = page.done
        return rows

    async def summary() -> Any:
        items = [item async for item in fed.engine.execute(CTX, request)]
        return items[-1]

    assert asyncio.run(pages()) == [64, 64, 64, 8]
    first = asyncio.run(summary())
    assert first.rows == 10 * ORDERS_PER_CUSTOMER
    sent = len(fed.sent["pg"])
    again = asyncio.run(summary())
    assert again.from_cache and len(fed.sent["pg"]) == sent
    fed.engine.purge_connection(CTX.tenant, "mdb")
    after = asyncio.run(summary())
    assert not after.from_cache and len(fed.sent["pg"]) == sent + 1
