"""Revocation over the bus: a query forwarded by the platform to a runtime replica, still
streaming when an administrator unselects what it reads, is stopped by the replica when
the platform event arrives, and the caller gets FAILED_PRECONDITION ("the selection
changed") before the result's end.

Real NATS with JetStream (the shared server, or FABRIC_TEST_NATS_URL), a platform and a
runtime replica assembled in this process (`fabric.app.processes`), a DuckDB source
under one FABRIC_HOME. Every wait is bounded (`until`, `run_bounded`).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import duckdb

from fabric.app.parts import catalog_manager, local_token
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.errors import SelectionChanged
from fabric.v1 import platform_pb2 as ppb
from tests.integration.test_roles import (
    CONNECTION,
    address,
    admin,
    bearer,
    cluster,
    names,
    settings_for,
    until,
)
from tests.support.nats import nats_url, run_bounded

ROWS = 1_000_000
"""About 40 MB of names: far more than the flow-control window (8 chunks of up to 1 MiB)
and gRPC's buffers hold, so the replica is still streaming when the change lands."""


def make_site(home: Path, tenant: str, stage: str) -> None:
    database = home / "crm.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR, score BIGINT);"
            "INSERT INTO people SELECT i, 'a person with a rather long name, number ' || i, i "
            f"FROM range(1, {ROWS + 1}) t(i);"
            "CREATE TABLE teams (id INTEGER PRIMARY KEY, label VARCHAR);"
            "INSERT INTO teams VALUES (1, 'one');"
        )
    store = SqliteMetadataStore(home / "metadata.sqlite")
    try:
        manager = catalog_manager(store)
        manager.create_connection(tenant, CONNECTION, "duckdb", {"*": {"path": str(database)}})
        manager.select(tenant, CONNECTION, stage, "people")
        manager.select(tenant, CONNECTION, stage, "teams")
    finally:
        store.close()


def test_a_replica_stops_a_forwarded_stream_when_the_event_arrives(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    make_site(tmp_path, tenant, stage)
    # Small messages: the stream is many chunks, and the replica is held at its window.
    settings = settings_for(tmp_path, url, batch_rows=1_000, max_message_bytes=64 * 1024)
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")
    reading = threading.Event()
    resume = threading.Event()

    def consume(client: FabricClient) -> tuple[int, BaseException | None]:
        batches = client.query_batches(CONNECTION, "SELECT id, name FROM people")
        received = batches.read_next_batch().num_rows
        reading.set()
        if not resume.wait(60):
            return received, TimeoutError("the test never let the reader go on")
        try:
            for batch in batches:
                received += batch.num_rows
        except SelectionChanged as error:
            return received, error
        return received, None

    async def body() -> None:
        async with cluster(settings, stage, replicas=1) as (platform, (runtime,)):
            revoked = lambda: runtime.engine.snapshot()["purge_stream_revoked"]  # noqa: E731
            with FabricClient(address(platform), token, timeout=60) as client:
                stream = asyncio.ensure_future(asyncio.to_thread(consume, client))
                try:
                    await until(reading.is_set, 30, "the first batch")
                    await until(lambda: runtime.replica.in_flight == 1, 10, "a running query")
                    channel, _, catalog = admin(platform, token)
                    with channel:
                        # An unrelated change first: the stream goes on.
                        await asyncio.to_thread(
                            catalog.Unselect,
                            ppb.UnselectRequest(connection=CONNECTION, entities=["teams"]),
                            metadata=bearer(token),
                            timeout=30,
                        )
                        await until(lambda: runtime.applier.applied == 1, 10, "the first event")
                        assert revoked() == 0
                        await asyncio.to_thread(
                            catalog.Unselect,
                            ppb.UnselectRequest(connection=CONNECTION, entities=["people"]),
                            metadata=bearer(token),
                            timeout=30,
                        )
                    await until(lambda: revoked() == 1, 10, "the replica to stop the stream")
                finally:
                    resume.set()
                received, ended = await stream
            assert isinstance(ended, SelectionChanged), ended
            assert "entity 'people' is no longer selected" in ended.message
            assert received < ROWS, "the stream stopped before its end"
            await until(lambda: runtime.replica.in_flight == 0, 10, "the replica to let go")
            assert runtime.replica.stats.failed == 1

    run_bounded(body(), 120)
