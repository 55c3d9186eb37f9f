"""Resource bombs at once: eight callers run the widest query the compiler lets through
(every row padded to 65,535 characters, 2,000 rows: 128 MiB a result uncapped) against a
real PostgreSQL through a `fabric serve` process, and the process's resident memory,
sampled from /proc while they run, grows by no more than

    result cache budget + callers x (result byte cap + WORKING_SET) + FIXED

(a cacheable call may hold its result, up to the byte cap, until it knows whether it fits
the cache; every call holds its working set while it streams).

A sampler kills the gateway the moment the bound is passed, so a regression fails fast
and never takes the machine's memory with it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient, QueryResult
from fabric.errors import QueryRejected
from fabric.model import SettingValue
from tests.support.gateway_process import GatewayProcess, gateway_process

pytestmark = pytest.mark.postgres

MIB = 1 << 20
CALLERS = 8
RESULT_CAP = 16 * MIB
CACHE_BUDGET = 16 * MIB
BATCH_BYTES = 8 * MIB  # FABRIC_BATCH_BYTES, the default
MESSAGE_BYTES = 4 * MIB  # the largest gRPC message of a result, the default
WORKING_SET = 2 * BATCH_BYTES + 8 * MESSAGE_BYTES
"""What one call in flight holds while it streams, whatever its result's size: the batch
the driver is reading and its decoded copy, and message-sized buffers at each step
after it (read ahead, encoded, coalesced into a gRPC message, framed, in gRPC's and
HTTP/2's send buffers) with the allocator's slack. Measured: 29 MiB for one call alone,
about 45 MiB a call with eight at once."""
FIXED = 32 * MIB
"""Threads' stacks and what the allocator keeps, however many calls."""
BOUND = CACHE_BUDGET + CALLERS * (RESULT_CAP + WORKING_SET) + FIXED
ROWS = 2_000
WIDTH = 65_535


@pytest.fixture(scope="module")
def table(postgres_url: str) -> Iterator[str]:
    schema = f"fabric_mem_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.bombs (id int PRIMARY KEY, label text);"
            f"INSERT INTO {schema}.bombs SELECT i, 'label ' || i "
            f"FROM generate_series(1, {ROWS}) i"
        )
    try:
        yield schema
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def gateway(tmp_path: Path, postgres_url: str, table: str) -> Iterator[GatewayProcess]:
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    try:
        manager = catalog_manager(store)
        settings: dict[str, SettingValue] = {
            "host": str(info.get("host") or "127.0.0.1"),
            "port": int(info.get("port") or 5432),
            "database": str(info["dbname"]),
            "user": str(info.get("user") or "postgres"),
        }
        manager.create_connection("default", "pg", "postgres", {"*": settings})
        manager.select("default", "pg", "development", f"{table}.bombs")
    finally:
        store.close()
    environment = {
        "FABRIC_AUTH": "none",
        "FABRIC_MAX_RESULT_BYTES": str(RESULT_CAP),
        "FABRIC_CACHE_MAX_BYTES": str(CACHE_BUDGET),
    }
    with gateway_process(tmp_path, environment, tmp_path / "gateway.log") as process:
        yield process


def bomb(caller: int) -> tuple[str, dict[str, int]]:
    """The widest query allowed: every row padded to WIDTH characters. Even callers bind
    a parameter (PostgreSQL's streamed rows), odd ones do not (COPY)."""
    sql = f"SELECT id, CAST(label AS char({WIDTH})) AS padded FROM bombs WHERE id > "
    return (sql + ":after", {"after": -caller}) if caller % 2 == 0 else (sql + "0", {})


class Sampler(threading.Thread):
    """Samples the gateway's RSS every few milliseconds; kills it past `limit`."""

    def __init__(self, gateway: GatewayProcess, limit: int) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.gateway = gateway
        self.limit = limit
        self.peak = gateway.rss()
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                rss = self.gateway.rss()
            except (OSError, RuntimeError):
                return  # the process is gone
            self.samples += 1
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                self.gateway.kill()  # past the bound: stop before the machine suffers
                return
            self.stop.wait(0.005)


def test_eight_resource_bombs_at_once_stay_within_the_stated_memory_bound(
    gateway: GatewayProcess,
) -> None:
    with FabricClient(gateway.address, timeout=60) as client:
        with pytest.raises(QueryRejected, match="between 1 and 65535"):
            client.query("pg", "SELECT CAST(label AS char(10000000)) AS p FROM bombs")
        for warm_up in (0, 1):  # both paths: pools, decoders, first allocations
            sql, params = bomb(warm_up)
            assert client.execute("pg", sql, params).summary.truncated
    baseline = gateway.rss()
    sampler = Sampler(gateway, baseline + BOUND)
    sampler.start()
    results: list[QueryResult | BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(CALLERS)

    def caller(index: int) -> None:
        sql, params = bomb(index)
        ttl = 60 if index % 4 < 2 else 0  # half of them cacheable
        try:
            with FabricClient(gateway.address, timeout=60) as own:
                go.wait(timeout=30)
                for _ in range(2):
                    result: QueryResult | BaseException = own.execute(
                        "pg", sql, params, cache_ttl=ttl
                    )
                    with lock:
                        results.append(result)
        except BaseException as error:  # reported below, with the others
            with lock:
                results.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    sampler.stop.set()
    sampler.join(timeout=10)
    growth = sampler.peak - baseline
    print(
        f"gateway RSS: baseline {baseline / MIB:.0f} MiB, peak growth {growth / MIB:.0f} MiB "
        f"(bound {BOUND / MIB:.0f} MiB) over {sampler.samples} samples, "
        f"{CALLERS} callers x 2 queries in {elapsed:.1f} s"
    )
    assert growth <= BOUND, f"RSS grew by {growth / MIB:.0f} MiB, over {BOUND / MIB:.0f} MiB"
    assert sampler.samples > 10, "too few samples to know the peak"
    assert len(results) == 2 * CALLERS
    for result in results:
        assert isinstance(result, QueryResult), result
        assert result.summary.truncated and not result.summary.from_cache
        assert result.table.nbytes <= RESULT_CAP
        assert 0 < result.table.num_rows < ROWS
