"""The platform's source work over the bus (`fabric.messaging.source_rpc`), on the
in-process bus, a real key ring and a real DuckDB source: a stage's replica answers what
the source holds, the source's own errors come back as they are, a replayed request is
never served twice, and without a replica the platform does the work itself only when
it may (`fabric.app.source_access`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from fabric.app.parts import catalog_manager, stage_connector_factory
from fabric.app.source_access import platform_connectors, source_replica_inspectors
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.errors import DeadlineExceeded, NoResponders, NotFound, SourceUnavailable
from fabric.messaging import InProcessBus, Message
from fabric.messaging.source_rpc import (
    SourceClient,
    SourceOp,
    SourceReplica,
    stage_source_filter,
)
from fabric.query.sources import no_secret_store
from fabric.security.kms import LocalKeyRing

TENANT, STAGE, CONNECTION = "acme", "development", "crm"


@dataclass
class Site:
    store: SqliteMetadataStore
    bus: InProcessBus
    client: SourceClient
    replica: SourceReplica


def _site_files(tmp_path: Path) -> SqliteMetadataStore:
    database = tmp_path / "crm.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL)")
        con.execute("CREATE TABLE notes (id INTEGER, body VARCHAR)")
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    catalog_manager(store).create_connection(
        TENANT, CONNECTION, "duckdb", {"*": {"path": str(database)}}
    )
    return store


@asynccontextmanager
async def site(tmp_path: Path, *, replica: bool = True) -> AsyncIterator[Site]:
    store = _site_files(tmp_path)
    kms = LocalKeyRing.open(tmp_path / "keyring.json")
    bus = InProcessBus()
    client = SourceClient(bus, kms, asyncio.get_running_loop(), timeout=5.0)
    server = SourceReplica(bus, kms, source_replica_inspectors(store, no_secret_store), stage=STAGE)
    if replica:
        await server.start()
    try:
        yield Site(store, bus, client, server)
    finally:
        await server.stop(1.0)
        await bus.close()
        store.close()


def test_a_replica_reads_the_schema_and_tests_the_connection(tmp_path: Path) -> None:
    async def body() -> None:
        async with site(tmp_path) as s:
            tables = await s.client.call(TENANT, STAGE, SourceOp.INTROSPECT, CONNECTION)
            record = s.store.get_connection(TENANT, CONNECTION)
            local = stage_connector_factory(no_secret_store)(record, STAGE)
            try:
                assert tables == local.introspect(None)
            finally:
                local.close()
            assert {t.name for t in tables} == {"people", "notes"}
            people = next(t for t in tables if t.name == "people")
            assert people.primary_key == ("id",)
            assert await s.client.call(TENANT, STAGE, SourceOp.TEST, CONNECTION) == []
            assert s.replica.served == 2
            # sealed both ways, nothing refused
            assert s.client.sealer.counters["opened"] == 2
            assert s.replica.sealer.rejected == 0

    asyncio.run(body())


def test_the_sources_error_comes_back_as_it_is(tmp_path: Path) -> None:
    async def body() -> None:
        async with site(tmp_path) as s:
            with pytest.raises(NotFound, match="ghost"):
                await s.client.call(TENANT, STAGE, SourceOp.TEST, "ghost")
            assert s.replica.failed == 1

    asyncio.run(body())


def test_a_replayed_request_is_never_served_twice(tmp_path: Path) -> None:
    async def body() -> None:
        async with site(tmp_path) as s:
            seen: list[Message] = []

            async def watch(message: Message) -> None:
                seen.append(message)

            await s.bus.subscribe(stage_source_filter(STAGE), watch)
            await s.client.call(TENANT, STAGE, SourceOp.TEST, CONNECTION)
            (original,) = seen
            with pytest.raises(DeadlineExceeded):
                await s.bus.request(original.subject, original.payload, timeout=0.5)
            assert s.replica.served == 1
            assert s.replica.sealer.counters["rejected_duplicate"] == 1

    asyncio.run(body())


def test_without_a_replica_the_platform_works_itself_only_when_allowed(tmp_path: Path) -> None:
    async def body() -> None:
        async with site(tmp_path, replica=False) as s:
            with pytest.raises(NoResponders):
                await s.client.call(TENANT, STAGE, SourceOp.TEST, CONNECTION)
            record = s.store.get_connection(TENANT, CONNECTION)

            def discover(source_access: bool) -> list[str]:
                connectors = platform_connectors(
                    s.client, no_secret_store, source_access=source_access
                )
                inspector = connectors.inspectors(record, STAGE)
                try:
                    return sorted(t.name for t in inspector.introspect(None))
                finally:
                    inspector.close()

            assert await asyncio.to_thread(discover, True) == ["notes", "people"]
            with pytest.raises(SourceUnavailable, match="no runtime replica"):
                await asyncio.to_thread(discover, False)
            # the same inspector goes to the replica as soon as there is one
            await s.replica.start()
            assert await asyncio.to_thread(discover, False) == ["notes", "people"]
            assert s.replica.served == 1
            # and even a platform that may reach sources leaves it to the replica
            assert await asyncio.to_thread(discover, True) == ["notes", "people"]
            assert s.replica.served == 2

    asyncio.run(body())
