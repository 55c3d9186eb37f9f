"""The Flight SQL door over a real PostgreSQL: a cancelled ADBC statement, an explicit
CancelFlightInfo and a timeout each stop the query inside PostgreSQL."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import grpc
import pytest

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.query.engine import QueryEngine
from fabric.v1 import flight_pb2 as fl
from fabric.v1 import flight_sql_pb2 as sql
from tests.e2e.flight_clients import FlightClient, connect, grpc_code
from tests.integration.test_gateway_postgres import (
    _activity,
    _settings_from_url,
    _slow_sql,
    _wait_until,
    pg_schema,
)

pytestmark = pytest.mark.postgres
__all__ = ["pg_schema"]  # the module fixture with the `facts` table, shared


@pytest.fixture(scope="module")
def flight_uri(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, pg_schema: str
) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("pg_flight")
    store = SqliteMetadataStore(home / "metadata.sqlite")
    manager = catalog_manager(store)
    manager.create_connection("default", "pg", "postgres", {"*": _settings_from_url(postgres_url)})
    manager.select("default", "pg", "development", f"{pg_schema}.facts")
    engine = QueryEngine(store, Settings(home=home, metrics_port=0))
    background = BackgroundGateway(
        assemble_gateway(engine, context_provider=local_admin_context),
        flight_address="127.0.0.1:0",
    ).start()
    try:
        yield background.flight_uri
    finally:
        background.stop()
        store.close()


def test_an_adbc_cancel_stops_the_query_in_postgres(flight_uri: str, postgres_url: str) -> None:
    marker = f"flight_cancel_{secrets.token_hex(4)}"
    errors: list[BaseException] = []
    with connect(flight_uri, connection="pg") as conn:
        cur = conn.cursor()

        def run() -> None:
            try:
                cur.execute(_slow_sql(marker))
                cur.fetchall()
            except BaseException as error:  # the cancelled call's error, checked below
                errors.append(error)

        worker = threading.Thread(target=run)
        worker.start()
        assert _wait_until(lambda: _activity(postgres_url, marker) == 1, within=10)
        cur.adbc_cancel()
        worker.join(timeout=10)
        cancelled_at = time.monotonic()
        assert _wait_until(lambda: _activity(postgres_url, marker) == 0, within=1.0)
        assert time.monotonic() - cancelled_at <= 1.0
        assert len(errors) == 1 and isinstance(errors[0], adbc_driver_manager.Error)
        cur.close()
        with conn.cursor() as again:  # the pool's connection is healthy
            again.execute("SELECT COUNT(*) AS n FROM facts")
            assert again.fetchall() == [(5000,)]


def test_cancel_flight_info_stops_a_started_query_in_postgres(
    flight_uri: str, postgres_url: str
) -> None:
    marker = f"flight_info_{secrets.token_hex(4)}"
    # A cross join that streams rows for minutes: GetFlightInfo returns with its schema
    # while PostgreSQL is still producing rows.
    query = (
        f"SELECT a.id, b.id AS other FROM facts a CROSS JOIN facts b WHERE a.label <> '{marker}'"
    )
    with FlightClient(flight_uri, {"x-fabric-connection": "pg"}) as client:
        info = client.info(sql.CommandStatementQuery(query=query))
        assert _activity(postgres_url, marker) == 1
        request = fl.CancelFlightInfoRequest(info=fl.FlightInfo.FromString(info.serialize()))
        client.action("CancelFlightInfo", request.SerializeToString())
        assert _wait_until(lambda: _activity(postgres_url, marker) == 0, within=1.0)


def test_a_timeout_header_stops_the_query_in_postgres(flight_uri: str, postgres_url: str) -> None:
    marker = f"flight_timeout_{secrets.token_hex(4)}"
    with (
        connect(flight_uri, connection="pg", headers={"x-fabric-timeout": "1"}) as conn,
        conn.cursor() as cur,
    ):
        started = time.monotonic()
        with pytest.raises(adbc_driver_manager.Error) as caught:
            cur.execute(_slow_sql(marker))
        assert time.monotonic() - started < 10
    assert grpc_code(caught.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_until(lambda: _activity(postgres_url, marker) == 0, within=1.0)
