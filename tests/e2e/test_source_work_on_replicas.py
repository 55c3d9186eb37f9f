"""The platform's source work runs on the stage's runtime replica: `fabric serve --role
platform` with FABRIC_PLATFORM_SOURCE_ACCESS=false and one `--role runtime` replica, as
separate processes over a nats-server of the test's own. The stage's PostgreSQL (with a
password, kept in the secret store) is reachable only through a proxy that lets the
replica's connections through and refuses any other process's: testing the connection,
discovery, selection, refresh and a developer's preview through the platform all work
(paging, which would run on the platform's own engine, is refused),
every connection the database saw came from the replica, and the platform never tried
one. Without a replica, the platform says so (UNAVAILABLE) instead of reaching out."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from fabric.app.parts import local_token
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import FailedPrecondition, SourceUnavailable
from fabric.model import SettingValue
from tests.integration.test_roles import _free_port, served
from tests.support.nats import private_nats_server
from tests.support.owner_proxy import OwnerProxy
from tests.support.pg_instance import private_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

STAGE = "production"
CONNECTION = "orders_db"


def test_discovery_refresh_and_preview_reach_the_database_only_from_the_replica(
    tmp_path: Path,
) -> None:
    with (
        private_postgres("Replica-Only-7d1e") as pg,
        private_nats_server(tmp_path) as nats,
        OwnerProxy(pg.port) as proxy,
    ):
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2) NOT NULL, note text)"
            )
            conn.execute(
                "INSERT INTO orders SELECT i, i * 1.5, 'n' || i FROM generate_series(1, 20) i"
            )
        base = {
            **os.environ,
            "FABRIC_HOME": str(tmp_path),
            "FABRIC_NATS_URL": nats.url,
            "FABRIC_AUTH": "local",
            "FABRIC_METRICS_PORT": "0",
        }
        base.pop("FABRIC_REPLICA_ID", None)
        platform_port = _free_port()
        platform_env = {
            **base,
            "FABRIC_LISTEN": f"127.0.0.1:{platform_port}",
            "FABRIC_PLATFORM_SOURCE_ACCESS": "false",
        }
        replica_env = {
            **base,
            "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
            "FABRIC_REPLICA_ID": "orders-r0",
        }
        with served(["--role", "platform"], platform_env, tmp_path / "platform.log") as platform:
            platform.ready()
            proxy.watch(platform.proc.pid)
            settings = Settings(home=tmp_path)
            admin_token = local_token(settings, stage=STAGE, role="admin")
            developer_token = local_token(settings, stage=STAGE, role="developer")
            address = f"127.0.0.1:{platform_port}"
            with FabricClient(address, admin_token) as admin:
                source: dict[str, SettingValue] = {
                    "host": "127.0.0.1",
                    "port": proxy.port,
                    "database": "postgres",
                    "user": pg.user,
                }
                # Testing settings before storing them needs the password just given,
                # which never goes on the bus: this platform cannot do it.
                with pytest.raises(FailedPrecondition, match="FABRIC_PLATFORM_SOURCE_ACCESS"):
                    admin.create_connection(
                        CONNECTION, "postgres", source, password=pg.password, stage=STAGE
                    )
                admin.create_connection(
                    CONNECTION, "postgres", source, password=pg.password, stage=STAGE, verify=False
                )
                # No replica of the stage yet: the platform says so, and reaches nothing.
                with pytest.raises(SourceUnavailable, match="no runtime replica"):
                    admin.discover(CONNECTION, stage=STAGE)
                assert proxy.accepted == [] and proxy.refused == []

                with served(
                    ["--role", "runtime", "--stage", STAGE], replica_env, tmp_path / "replica.log"
                ) as replica:
                    proxy.allow(replica.proc.pid)
                    replica.ready()
                    assert admin.test_connection(CONNECTION, STAGE).stage == STAGE
                    tables = admin.discover(CONNECTION, stage=STAGE)
                    (orders,) = [t for t in tables if t.name == "orders"]
                    assert [c.name for c in orders.columns] == ["id", "amount", "note"]
                    assert list(orders.primary_key) == ["id"]
                    admin.select(CONNECTION, "public.orders", stage=STAGE)

                    with FabricClient(address, developer_token) as developer:
                        preview = developer.preview(CONNECTION, "orders", limit=5)
                        # paging runs on the platform's own engine: refused, not opened
                        with pytest.raises(FailedPrecondition, match="OpenStatement"):
                            developer.open_statement(CONNECTION, "SELECT id FROM orders")
                    assert preview.num_rows == 5

                    with psycopg.connect(pg.url(), autocommit=True) as conn:
                        conn.execute("ALTER TABLE orders ADD COLUMN region text")
                    refreshed = admin.refresh(CONNECTION, stage=STAGE)
                    assert [(d.kind, d.column) for d in refreshed.drift] == [
                        ("new_column", "region")
                    ]
                    assert refreshed.catalog_version > refreshed.previous_catalog_version
                    # every connection the database saw was the replica's, and the
                    # platform never tried one
                    assert len(proxy.accepted) >= 4, proxy.accepted
                    assert set(proxy.accepted) == {replica.proc.pid}
                    assert proxy.refused == []
                    assert replica.stop() == 0
            assert platform.stop() == 0
