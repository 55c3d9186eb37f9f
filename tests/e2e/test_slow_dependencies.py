"""A slow dependency of one connection never stalls the gateway's other calls: resolving
a connection (metadata store reads, the secret store, building a connector) runs in a
worker thread, not on the event loop."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.query.engine import QueryEngine
from tests.e2e.conftest import make_shop, tenant_from_metadata

SECRET_REF = "connections/default/locked/all"


def test_a_stuck_secret_store_does_not_stall_other_connections(tmp_path: Path) -> None:
    database = tmp_path / "shop.duckdb"
    make_shop(database)
    entered, release, armed = threading.Event(), threading.Event(), threading.Event()

    def secrets(reference: str) -> str:
        # Once armed, the secret store of "locked" hangs (a Vault that does not answer)
        # until told to go on.
        assert reference == SECRET_REF
        if not armed.is_set():
            return "unused by DuckDB"
        entered.set()
        if not release.wait(timeout=60):
            raise TimeoutError("the test never released the secret store")
        return "unused by DuckDB"

    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store, secrets)
    manager.create_connection(DEFAULT_TENANT, "shop", "duckdb", {"*": {"path": str(database)}})
    manager.create_connection(
        DEFAULT_TENANT, "locked", "duckdb", {"*": {"path": str(database)}}, {"*": SECRET_REF}
    )
    for name in ("shop", "locked"):
        manager.select(DEFAULT_TENANT, name, DEFAULT_STAGE, "payroll")
    armed.set()

    engine = QueryEngine(store, Settings(home=tmp_path, metrics_port=0), secrets=secrets)
    gateway = BackgroundGateway(
        assemble_gateway(engine, context_provider=tenant_from_metadata)
    ).start()
    try:
        with (
            FabricClient(gateway.address, timeout=30) as slow,
            FabricClient(gateway.address, timeout=10) as other,
            ThreadPoolExecutor(1) as pool,
        ):
            stuck = pool.submit(slow.query, "locked", "SELECT id FROM payroll")
            assert entered.wait(timeout=30), "the locked connection was never resolved"
            # While that call waits on its secret store, another connection answers.
            table = other.query("shop", "SELECT id, salary FROM payroll")
            assert table.num_rows == 1
            assert not stuck.done()
            release.set()
            assert stuck.result(timeout=30).column("id").to_pylist() == [1]
    finally:
        release.set()
        gateway.stop()
        store.close()
