"""A federated join larger than FABRIC_FEDERATION_MEMORY completes by spilling to the
query's directory under FABRIC_HOME, the process's resident memory stays within the
cap plus a stated overhead, and nothing is left on disk afterwards."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pytest

from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import MIB, Settings
from fabric.context import RequestContext, Role
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.federation.spill import OWNER_FILE
from fabric.results.ipc import open_ipc_stream
from tests.support.servers import postgres_url

CTX = RequestContext(tenant="acme", stage="development", role=Role.APP, principal="app")
ROWS = 600_000
PAD = 200
CAP = 64 * MIB
OVERHEAD = 160 * MIB
"""What the process holds beyond DuckDB's cap while the join runs: the batches in flight
from both sources (decoded text and Arrow, BATCH_WORKING_SET of them at most per
source), DuckDB's allocations outside its buffer manager (hash table directory,
operator state), pyarrow's memory pool keeping freed blocks, and the Python heap. The
join's build side alone (ROWS x PAD bytes, ~120 MB) is twice the cap, and both sides
held in memory would pass cap + overhead. Measured here: 129 MiB of growth in all."""


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[QueryEngine]:
    url = postgres_url()
    schema = f"fedmem_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.big AS SELECT g AS k, repeat(md5(g::text), {PAD // 32}) "
            f"|| left(md5((-g)::text), {PAD % 32}) AS pad FROM generate_series(1, {ROWS}) g"
        )
    big2 = tmp_path / "big2.duckdb"
    with duckdb.connect(str(big2)) as con:
        con.execute(
            f"CREATE TABLE big2 AS SELECT range::INTEGER AS k, repeat('x', {PAD}) AS pad "
            f"FROM range(1, {ROWS + 1})"
        )
    pg = urlparse(url)
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store)
    manager.create_connection(
        "acme",
        "pg",
        "postgres",
        {
            "*": {
                "host": pg.hostname or "127.0.0.1",
                "port": pg.port or 5432,
                "user": unquote(pg.username or "postgres"),
                "database": (pg.path or "/test").lstrip("/") or "test",
            }
        },
    )
    manager.select("acme", "pg", "development", f"{schema}.big")
    manager.create_connection("acme", "ddb", "duckdb", {"*": {"path": str(big2)}})
    manager.select("acme", "ddb", "development", "main.big2")
    engine = QueryEngine(
        store,
        Settings(
            home=tmp_path / "home",
            metrics_port=0,
            federation_memory=CAP,
            federation_threads=1,
        ),
    )
    try:
        yield engine
    finally:
        engine.close()
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_join_larger_than_the_cap_spills_and_leaves_nothing(engine: QueryEngine) -> None:
    root = engine.spill_area.path  # this engine's own spill area
    sql = (
        "SELECT a.k, length(a.pad) + length(b.pad) AS width FROM pg.big a "
        "JOIN ddb.big2 b ON a.k = b.k ORDER BY a.pad DESC LIMIT 3"
    )
    baseline = _rss()
    peak = baseline
    spilled = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak, spilled
        while not done.wait(0.02):
            peak = max(peak, _rss())
            if root.exists():
                files = [p for p in root.rglob("*") if p.is_file() and p.name != OWNER_FILE]
                spilled = max(spilled, len(files))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def go() -> list[bytes]:
        return [
            item
            async for item in engine.execute(CTX, QueryRequest("", sql))
            if isinstance(item, bytes)
        ]

    try:
        messages = asyncio.run(asyncio.wait_for(go(), 300))
    finally:
        done.set()
        watcher.join(5)
    table = open_ipc_stream(messages).read_all()
    assert table.num_rows == 3 and set(table.column("width").to_pylist()) == {2 * PAD}
    assert spilled > 0, "the join did not spill"
    assert peak - baseline <= CAP + OVERHEAD, f"RSS grew by {(peak - baseline) // MIB} MiB"
    assert engine.settle(30)
    assert [p.name for p in root.iterdir()] == [OWNER_FILE]  # the query's spill is gone
