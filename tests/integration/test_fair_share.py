"""One app cannot take the capacity every app shares: source connections, query slots and
open statements (a real PostgreSQL, a real gateway, the real client, verified tokens of
several apps in two tenants).

A long scan is made to last by a lock the test holds on its table (LOCK TABLE ... IN
ACCESS EXCLUSIVE MODE): the scan waits at the server, costing no CPU, until the test
lets it go. Every wait is polled with a deadline.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import configured_gateway
from fabric.app.parts import catalog_manager, local_token, open_store
from fabric.client import FabricClient
from fabric.clock import FakeClock
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE
from fabric.errors import NotFound, ResourceExhausted
from fabric.query.engine import QueryEngine

pytestmark = pytest.mark.postgres

SCAN_ROWS = 20_000
SCAN = "SELECT id, label FROM scans ORDER BY id"
LOOKUP = "SELECT id, name FROM items WHERE id = :id"
POOL_TIMEOUT = 3
"""Seconds a query waits for a pooled connection before UNAVAILABLE (the source's own
setting): a point query that waited for the pool takes at least this long."""


@pytest.fixture(scope="module")
def schema(postgres_url: str) -> Iterator[str]:
    name = f"fabric_share_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.scans (id bigint PRIMARY KEY, label text)")
        conn.execute(
            f"INSERT INTO {name}.scans SELECT i, 'row ' || i FROM generate_series(1, {SCAN_ROWS}) i"
        )
        conn.execute(f"CREATE TABLE {name}.items (id bigint PRIMARY KEY, name text)")
        conn.execute(
            f"INSERT INTO {name}.items SELECT i, 'item ' || i FROM generate_series(1, 100) i"
        )
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@dataclass
class Site:
    gateway: BackgroundGateway
    engine: QueryEngine
    settings: Settings
    application: str
    """The gateway's connections' application_name at PostgreSQL."""
    url: str
    schema: str

    def client(self, tenant: str, subject: str, *, timeout: float = 30) -> FabricClient:
        token = local_token(self.settings, tenant=tenant, subject=subject, role="app")
        return FabricClient(self.gateway.address, token, timeout=timeout)

    def at_source(self, state: str = "active", table: str = "scans") -> int:
        """The gateway's connections at PostgreSQL in `state` on a query of `table`."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state = %s AND query LIKE %s",
                [self.application, state, f"%{table}%"],
            ).fetchone()
        return int(row[0]) if row else 0

    def busy_connections(self) -> int:
        """The gateway's connections doing anything but waiting idle in its pool."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state <> 'idle'",
                [self.application],
            ).fetchone()
        return int(row[0]) if row else 0

    def metric(self, line_start: str) -> float:
        for line in generate_latest(self.engine.metrics.registry).decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {line_start}")


@contextmanager
def site_of(
    tmp_path: Path, postgres_url: str, schema: str, *, pool_max: int, **overrides: Any
) -> Iterator[Site]:
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    application = f"fabric_share_{secrets.token_hex(4)}"
    clock = overrides.pop("clock", None)
    settings = Settings(home=tmp_path / "home", metrics_port=0, auth="local", **overrides)
    settings.home.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    manager = catalog_manager(store)
    for tenant in ("acme", "globex"):
        manager.create_connection(
            tenant,
            "pg",
            "postgres",
            {
                "*": {
                    "host": str(info.get("host") or "127.0.0.1"),
                    "port": int(info.get("port") or 5432),
                    "database": str(info["dbname"]),
                    "user": str(info.get("user") or "postgres"),
                    "pool_max": pool_max,
                    "pool_timeout": POOL_TIMEOUT,
                    "application_name": application,
                }
            },
        )
        manager.select(tenant, "pg", DEFAULT_STAGE, f"{schema}.scans")
        manager.select(tenant, "pg", DEFAULT_STAGE, f"{schema}.items")
    options = {"clock": clock} if clock is not None else {}
    gateway = configured_gateway(settings, store, **options)
    try:
        with BackgroundGateway(gateway) as background:
            yield Site(background, gateway.engine, settings, application, postgres_url, schema)
    finally:
        store.close()


@contextmanager
def scans_held(site: Site) -> Iterator[None]:
    """Every query of `scans` waits at the server until the block ends."""
    with psycopg.connect(site.url) as conn:
        conn.execute(f"LOCK TABLE {site.schema}.scans IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling with a deadline


def scan_rows(site: Site, tenant: str, subject: str) -> list[int]:
    with site.client(tenant, subject) as client:
        return client.query("pg", SCAN).column("id").to_pylist()


def test_a_point_query_is_not_starved_by_long_scans(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    with (
        site_of(tmp_path, postgres_url, schema, pool_max=2) as site,
        ThreadPoolExecutor(2) as pool,
    ):
        with scans_held(site):
            scans = [pool.submit(scan_rows, site, "acme", "scanner") for _ in range(2)]
            # Both scans are in: at the source, or the second one waiting for its turn.

            def both_in() -> bool:
                waiting = site.engine.snapshot().get("admission_waiting", 0)
                return site.at_source() == 2 or (site.at_source() == 1 and waiting == 1)

            until(both_in, 10, "two scans holding or waiting for the pool of 2")
            started = time.monotonic()
            with site.client("acme", "lookup") as client:
                row = client.query("pg", LOOKUP, {"id": 7}).to_pylist()
            waited = time.monotonic() - started
            assert row == [{"id": 7, "name": "item 7"}]
            # It did not wait for a pooled connection (that takes POOL_TIMEOUT seconds).
            assert waited < POOL_TIMEOUT - 1
            assert site.at_source() == 1, "a long scan took the connection held back"
        for scan in scans:
            assert scan.result(timeout=30) == list(range(1, SCAN_ROWS + 1))
        assert site.metric("fabric_admission_queued_total") >= 1


def test_a_caller_over_its_share_waits_then_is_refused_with_a_retry_hint(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    with (
        site_of(
            tmp_path, postgres_url, schema, pool_max=5, principal_max_queries=1, admission_wait=1.0
        ) as site,
        ThreadPoolExecutor(2) as pool,
    ):
        with scans_held(site):
            first = pool.submit(scan_rows, site, "acme", "greedy")
            until(lambda: site.at_source() == 1, 10, "the first scan at the source")
            started = time.monotonic()
            with (
                site.client("acme", "greedy", timeout=8) as greedy,
                pytest.raises(ResourceExhausted) as refused,
            ):
                greedy.query("pg", SCAN)
            waited = time.monotonic() - started
            assert 1.0 <= waited < 5
            assert refused.value.retry_after == 1.0
            assert "share" in refused.value.message and "retry" in refused.value.message
            # Another app of the same tenant is not held back by the greedy one's share.
            other: Future[list[int]] = pool.submit(scan_rows, site, "acme", "other")
            until(lambda: site.at_source() == 2, 10, "the other app's scan at the source")
        assert first.result(timeout=30) == list(range(1, SCAN_ROWS + 1))
        assert other.result(timeout=30) == list(range(1, SCAN_ROWS + 1))
        assert site.metric('fabric_admission_refused_total{reason="principal_queries"}') == 1


def test_open_statements_idle_between_pages_hold_no_connection(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    with (
        site_of(tmp_path, postgres_url, schema, pool_max=2) as site,
        site.client("acme", "pager") as pager,
    ):
        statements = [pager.open_statement("pg", SCAN, page_rows=5_000) for _ in range(10)]
        assert all(not statement.done for statement in statements)
        assert site.busy_connections() == 0
        started = time.monotonic()
        with site.client("acme", "reader") as reader:
            total = reader.query("pg", "SELECT count(*) AS n FROM scans").to_pylist()
        assert total == [{"n": SCAN_ROWS}]
        assert time.monotonic() - started < POOL_TIMEOUT - 1
        for statement in statements:
            ids = [i for page in statement for i in page.column("id").to_pylist()]
            assert ids == list(range(1, SCAN_ROWS + 1))
            assert statement.summary is not None and not statement.summary.truncated


def test_a_statement_larger_than_its_buffer_holds_its_connection_within_its_share(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    clock = FakeClock()
    with (
        site_of(
            tmp_path,
            postgres_url,
            schema,
            pool_max=3,
            statement_buffer_bytes=16 * 1024,
            principal_max_queries=1,
            admission_wait=0.5,
            clock=clock,
        ) as site,
        site.client("acme", "pager") as pager,
    ):
        statement = pager.open_statement("pg", SCAN, page_rows=100)
        first = statement.fetch()
        assert first is not None and first.column("id").to_pylist() == list(range(1, 101))
        assert site.busy_connections() == 1  # the rest is still at the source
        # The statement counts as a running query of its caller.
        with pytest.raises(ResourceExhausted):
            pager.query("pg", LOOKUP, {"id": 1})
        with site.client("acme", "other") as other:
            assert other.query("pg", LOOKUP, {"id": 1}).num_rows == 1
        # Idle past the shorter limit of a statement holding a connection: purged,
        # its connection released.
        clock.advance(site.settings.statement_pinned_idle_limit)
        assert site.engine.open_statements.sweep() == 1
        until(lambda: site.busy_connections() == 0, 10, "the connection released")
        with pytest.raises(NotFound):
            statement.fetch()
        assert pager.query("pg", LOOKUP, {"id": 2}).num_rows == 1


def test_open_statements_are_shared_out_per_principal_and_per_tenant(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    with site_of(
        tmp_path,
        postgres_url,
        schema,
        pool_max=5,
        principal_max_statements=2,
        tenant_max_statements=3,
    ) as site:
        a1, a2, b = (
            site.client("acme", "one"),
            site.client("acme", "two"),
            site.client("globex", "three"),
        )
        with a1, a2, b:
            held = [a1.open_statement("pg", SCAN, page_rows=10) for _ in range(2)]
            with pytest.raises(ResourceExhausted) as principal_full:
                a1.open_statement("pg", SCAN, page_rows=10)
            assert "this caller" in principal_full.value.message
            assert principal_full.value.retry_after is not None
            held.append(a2.open_statement("pg", SCAN, page_rows=10))
            with pytest.raises(ResourceExhausted) as tenant_full:
                a2.open_statement("pg", SCAN, page_rows=10)
            assert "this tenant" in tenant_full.value.message
            held.append(b.open_statement("pg", SCAN, page_rows=10))  # another tenant's share
            held[0].close()
            held.append(a1.open_statement("pg", SCAN, page_rows=10))  # room again
            for statement in held[1:]:
                statement.close()
        assert site.metric('fabric_statements_refused_total{share="principal"}') == 1
        assert site.metric('fabric_statements_refused_total{share="tenant"}') == 1
