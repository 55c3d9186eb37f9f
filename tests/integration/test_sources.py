"""SourceRegistry under concurrency: resolving runs in worker threads, so several calls
may find the same change at once; exactly one builds the connector, none is closed
under another call's feet."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from connectors import Connector
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.model import Connection, SettingValue
from fabric.query.sources import BoundSource, SourceRegistry, default_connector_factory


def test_concurrent_first_resolves_build_one_connector(tmp_path: Path) -> None:
    database = tmp_path / "db.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store)
    manager.create_connection(DEFAULT_TENANT, "c", "duckdb", {"*": {"path": str(database)}})
    manager.select(DEFAULT_TENANT, "c", DEFAULT_STAGE, "t")

    built: list[Connector] = []
    closed: list[Connector] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def factory(
        connection: Connection, settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        connector = default_connector_factory(connection, settings, password)
        real_close = connector.close

        def close() -> None:
            with lock:
                closed.append(connector)
            real_close()

        connector.close = close  # type: ignore[method-assign]
        with lock:
            built.append(connector)
        return connector

    registry = SourceRegistry(store, connector_factory=factory)

    def resolve() -> BoundSource:
        start.wait(timeout=10)
        return registry.resolve(DEFAULT_TENANT, "c", DEFAULT_STAGE)

    try:
        with ThreadPoolExecutor(8) as pool:
            sources = [f.result(timeout=30) for f in [pool.submit(resolve) for _ in range(8)]]
        assert len(built) == 1 and closed == []
        assert all(source is sources[0] for source in sources)
        # A change is picked up once too, and the connector (same settings) is kept.
        manager.select(DEFAULT_TENANT, "c", DEFAULT_STAGE, "t")
        start.reset()
        with ThreadPoolExecutor(8) as pool:
            again = [f.result(timeout=30) for f in [pool.submit(resolve) for _ in range(8)]]
        assert len({id(source) for source in again}) == 1
        assert again[0] is not sources[0] and again[0].connector is sources[0].connector
        assert len(built) == 1 and closed == []
    finally:
        registry.close()
        store.close()
