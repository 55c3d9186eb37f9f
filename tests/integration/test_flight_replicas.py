"""Runtime replicas serve Arrow Flight SQL too, with their gRPC API's stage rule.

Real NATS (the shared server), a real DuckDB source, the ADBC Flight SQL driver; the
replica is assembled in this test's event loop (`fabric.app.processes.RuntimeProcess`,
what `fabric serve --role runtime --stage S` runs) with FABRIC_FLIGHT_LISTEN set, and
once as that command itself, a subprocess.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import adbc_driver_manager
import grpc
import pytest

from connectors import Connector
from fabric.app.parts import local_token
from fabric.app.processes import RuntimeProcess
from fabric.config import Settings
from fabric.model import Connection, SettingValue
from fabric.query.sources import default_connector_factory
from tests.e2e.conftest import RecordingConnector
from tests.e2e.flight_clients import connect, grpc_code, message_of
from tests.integration.test_roles import (
    CONNECTION,
    _free_port,
    expected,
    make_site,
    names,
    served,
    settings_for,
)
from tests.support.nats import nats_url, run_bounded

FLIGHT_SQL = "SELECT count(*) AS n, sum(score) AS total FROM people WHERE score > ?"


def _query(uri: str, token: str, minimum: int) -> list[tuple[Any, ...]]:
    with connect(uri, connection=CONNECTION, token=token) as conn, conn.cursor() as cur:
        cur.execute(FLIGHT_SQL, (minimum,))
        rows: list[tuple[Any, ...]] = cur.fetchall()
        return rows


def test_a_replica_serves_flight_sql_to_its_own_stage_only(tmp_path: Path) -> None:
    """A replica started with FABRIC_FLIGHT_LISTEN answers Flight SQL for tokens of its
    stage, and refuses a genuine token of another stage with PERMISSION_DENIED (as its
    gRPC QueryService does) before any work reaches the source."""
    url = nats_url()
    tenant, stage = names()
    other = f"{stage}-prod"
    database = make_site(tmp_path, tenant, stage)
    settings = dataclasses.replace(
        settings_for(tmp_path, url, replica_id=f"{stage}-flight"),
        flight_listen="127.0.0.1:0",
    )
    executed: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Event()
    gate.set()

    def recording(
        connection: Connection, values: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        return RecordingConnector(
            default_connector_factory(connection, values, password), executed, gate
        )

    async def body() -> None:
        runtime = await RuntimeProcess.open(
            settings, stage=stage, listen="127.0.0.1:0", connector_factory=recording
        )
        try:
            line = await runtime.start()
            port = runtime.gateway.flight_port
            assert port and f"Flight SQL on port {port}" in line
            uri = f"grpc://127.0.0.1:{port}"
            for role in ("app", "developer", "admin"):
                foreign = local_token(settings, tenant=tenant, stage=other, role=role)
                with pytest.raises(adbc_driver_manager.Error) as refused:
                    await asyncio.to_thread(_query, uri, foreign, 0)
                assert grpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
                assert f"serves stage '{stage}'" in message_of(refused.value)
                assert f"for stage '{other}'" in message_of(refused.value)
            assert executed == []  # refused before any work reached the source
            own = local_token(settings, tenant=tenant, stage=stage, role="app")
            rows = await asyncio.to_thread(_query, uri, own, 10)
            assert [dict(zip(("n", "total"), row, strict=True)) for row in rows] == expected(
                database, 10
            )
            assert len(executed) == 1
        finally:
            await runtime.stop(1.0)

    run_bounded(body(), 60)


def test_a_replica_without_the_setting_serves_no_flight_sql(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url, replica_id=f"{stage}-plain")

    async def body() -> None:
        runtime = await RuntimeProcess.open(settings, stage=stage, listen="127.0.0.1:0")
        try:
            line = await runtime.start()
            assert runtime.gateway.flight_port is None
            assert "Flight SQL" not in line
        finally:
            await runtime.stop(1.0)

    run_bounded(body(), 60)


def test_fabric_serve_role_runtime_serves_flight_sql(tmp_path: Path) -> None:
    """What an operator runs: `fabric serve --role runtime --stage S` with
    FABRIC_FLIGHT_LISTEN, a subprocess (stopped in `served`'s exit)."""
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    flight_port = _free_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_NATS_URL": url,
        "FABRIC_AUTH": "local",
        "FABRIC_BUS_CONNECT_TIMEOUT": "10",
        "FABRIC_REPLICA_ID": f"{stage}-cli",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_FLIGHT_LISTEN": f"127.0.0.1:{flight_port}",
    }
    settings = Settings(home=tmp_path)
    own = local_token(settings, tenant=tenant, stage=stage, role="app")
    foreign = local_token(settings, tenant=tenant, stage=f"{stage}-prod", role="app")
    uri = f"grpc://127.0.0.1:{flight_port}"
    with served(["--role", "runtime", "--stage", stage], env, tmp_path / "r.log") as runtime:
        assert f"Flight SQL on port {flight_port}" in runtime.ready()
        rows = _query(uri, own, 500)
        assert [dict(zip(("n", "total"), row, strict=True)) for row in rows] == expected(
            database, 500
        )
        with pytest.raises(adbc_driver_manager.Error) as refused:
            _query(uri, foreign, 0)
        assert grpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
        assert runtime.stop() == 0, (tmp_path / "r.log").read_text()
