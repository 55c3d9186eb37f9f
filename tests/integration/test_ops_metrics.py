"""What an operator scrapes: per-connection pool gauges, authentication failures by
reason and latency by connection, read from the gateway's /metrics endpoint.

A real gateway with token verification over a real PostgreSQL source (a schema of its
own, dropped at the end), called over a real channel; the endpoint is read over HTTP as
Prometheus reads it."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import NotFound, PermissionDenied, Unauthenticated
from fabric.model import SettingValue
from fabric.query.engine import QueryEngine
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier, mint_token

STAGE = "development"
TENANT = "default"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def site(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Any, str, Any, str]]:
    """A gateway over a PostgreSQL `people` table (connection `pg`, pool of 2), the
    token config, and the table's qualified name."""
    schema = f"ops_{secrets.token_hex(4)}"
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.people (id int PRIMARY KEY, score int);"
            f"INSERT INTO {schema}.people SELECT i, i FROM generate_series(1, 50) i"
        )
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    settings_of_pg: dict[str, SettingValue] = {
        "host": str(info.get("host") or "127.0.0.1"),
        "port": int(info.get("port") or 5432),
        "database": str(info["dbname"]),
        "user": str(info.get("user") or "postgres"),
        "pool_max": 2,
    }
    manager = catalog_manager(store)
    manager.create_connection(TENANT, "pg", "postgres", {"*": settings_of_pg})
    manager.select(TENANT, "pg", STAGE, f"{schema}.people", entity_name="people")
    config = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "token.key"))
    settings = Settings(home=tmp_path, metrics_listen="127.0.0.1:0")
    engine = QueryEngine(store, settings)
    background = BackgroundGateway(
        assemble_gateway(engine, verifier=TokenVerifier(config)), metrics=True
    ).start()
    try:
        yield background, f"{schema}.people", config, postgres_url
    finally:
        background.stop()
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.postgres
def test_pool_gauges_auth_failures_and_latency_by_connection_are_scraped(
    site: tuple[Any, str, Any, str], tmp_path: Path
) -> None:
    background, table, config, postgres_url = site
    port = background.gateway.metrics_port
    labels = {"tenant": TENANT, "connection": "pg", "stage": STAGE}
    app = mint_token(config, tenant=TENANT, stage=STAGE, role="app", subject="a", ttl=300)
    # A token signed with another key.
    foreign = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "foreign.key"))
    forged = mint_token(foreign, tenant=TENANT, stage=STAGE, role="admin", subject="x", ttl=60)
    sql = "SELECT count(*) AS n FROM people WHERE score > :min"

    with FabricClient(background.address, app, timeout=30) as client:
        assert client.query("pg", sql, {"min": 10}).to_pylist() == [{"n": 40}]
        with pytest.raises(NotFound):
            client.query("no-such-connection", sql, {"min": 1})
        before = scrape(port)
        assert value(before, "fabric_pool_connections_in_use", **labels) == 0
        assert (value(before, "fabric_pool_connections_idle", **labels) or 0) >= 1
        assert value(before, "fabric_pool_waiting", **labels) == 0
        count = "fabric_connection_query_seconds_count"
        assert value(before, count, tenant=TENANT, connection="pg", outcome="ok") == 1
        # A name a caller only asked for is never a label.
        assert not [key for key in before if ("connection", "no-such-connection") in key[1]]

        # A query waiting at the source holds a connection of the pool while it runs.
        with psycopg.connect(postgres_url) as locker:
            locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            outcome: list[Any] = []
            waiting = threading.Thread(
                target=lambda: outcome.append(client.query("pg", sql, {"min": 0}))
            )
            waiting.start()
            deadline = time.monotonic() + 10
            while value(scrape(port), "fabric_pool_connections_in_use", **labels) != 1:
                assert time.monotonic() < deadline, "the pool never showed the query's connection"
                time.sleep(0.02)
            locker.rollback()
            waiting.join(timeout=30)
        assert outcome and outcome[0].to_pylist() == [{"n": 50}]

    with (
        FabricClient(background.address, None, timeout=10) as anonymous,
        pytest.raises(Unauthenticated),
    ):
        anonymous.query("pg", sql, {"min": 1})
    with (
        FabricClient(background.address, forged, timeout=10) as impostor,
        pytest.raises(Unauthenticated),
    ):
        impostor.query("pg", sql, {"min": 1})
    with (
        FabricClient(background.address, app, timeout=10) as app_client,
        pytest.raises(PermissionDenied),
    ):
        app_client.list_connections()  # an admin's method
    after = scrape(port)
    failures = {
        reason: value(after, "fabric_auth_failures_total", reason=reason)
        for reason in ("missing_token", "invalid_token", "role", "wrong_stage")
    }
    assert failures == {"missing_token": 1, "invalid_token": 1, "role": 1, "wrong_stage": 0}
    assert value(after, count, tenant=TENANT, connection="pg", outcome="ok") == 2
    assert (value(after, "fabric_bytes_sent_total", protocol="grpc") or 0) > 0
    assert value(after, "fabric_pool_connections_in_use", **labels) == 0
