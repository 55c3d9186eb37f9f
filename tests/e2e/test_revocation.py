"""Revocation over the real gRPC API: a statement or stream opened before a change that
narrows access gets FAILED_PRECONDITION ("the selection changed") at its next page or
batch, no row of the revoked data after it, and nothing more reaches the source; a
change that leaves it allowed does not stop it. Every trigger goes through the platform
services a developer or administrator calls (CatalogService, ConnectionService); the
CLI's triggers are in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fabric.api.status import ERROR_CODE_KEY
from fabric.client import FabricClient
from fabric.errors import SelectionChanged
from fabric.v1 import platform_pb2 as pb
from fabric.v1 import platform_pb2_grpc as pb_grpc
from fabric.v1 import query_pb2, query_pb2_grpc
from tests.e2e.conftest import Harness, start_harness

SQL = "SELECT id, amount FROM orders ORDER BY id"
ORDERS = 20_000
LONG = "SELECT o.id, o.amount FROM orders o JOIN orders p ON p.id <= 100"
"""2 million rows: far more than gRPC buffers between a client that stopped reading and
the gateway, so the stream is still running when the change lands."""
LONG_ROWS = 100 * ORDERS


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    # Small batches and messages: a stream is many messages, each a step it can stop at.
    h = start_harness(tmp_path, batch_rows=500, max_message_bytes=8 * 1024)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def stage(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-stage", name),)


class Admin:
    """The platform services, as the harness's administrator of the default tenant."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.catalog = pb_grpc.CatalogServiceStub(channel)
        self.connections = pb_grpc.ConnectionServiceStub(channel)

    def call(self, method: Callable[..., object], request: object, at: str = "development") -> None:
        method(request, metadata=stage(at), timeout=30)


def path_of(h: Harness) -> str:
    return str(Path(h.store.path).parent / "shop.duckdb")


Trigger = Callable[[Admin, Harness], None]


def unselect_orders(admin: Admin, h: Harness) -> None:
    admin.call(admin.catalog.Unselect, pb.UnselectRequest(connection="shop", entities=["orders"]))


def select_fewer_columns(admin: Admin, h: Harness) -> None:
    admin.call(
        admin.catalog.Select,
        pb.SelectRequest(
            connection="shop", tables=[pb.TableSelection(table="orders", columns=["id", "note"])]
        ),
    )


def repoint_the_connection(admin: Admin, h: Harness) -> None:
    copy = Path(path_of(h)).with_name("shop-copy.duckdb")
    shutil.copyfile(path_of(h), copy)
    settings = {"path": pb.SettingValue(string_value=str(copy))}
    admin.call(
        admin.connections.UpdateConnection,
        pb.UpdateConnectionRequest(
            name="shop", stages=[pb.StageConfig(stage="*", settings=settings)]
        ),
    )


def delete_the_connection(admin: Admin, h: Harness) -> None:
    admin.call(admin.connections.DeleteConnection, pb.DeleteConnectionRequest(name="shop"))


TRIGGERS: dict[str, tuple[Trigger, str]] = {
    "unselect-table": (unselect_orders, "entity 'orders' is no longer selected"),
    "narrower-selection": (select_fewer_columns, "column 'orders.amount' is no longer selected"),
    "connection-updated": (repoint_the_connection, "configuration of connection 'shop'"),
    "connection-deleted": (delete_the_connection, "connection 'shop' was deleted"),
}


def unrelated_change(admin: Admin, h: Harness) -> None:
    """Another table's columns change: the running query reads none of them."""
    admin.call(
        admin.catalog.Select,
        pb.SelectRequest(
            connection="shop", tables=[pb.TableSelection(table="customers", columns=["id"])]
        ),
    )


@pytest.mark.parametrize("trigger", TRIGGERS.keys())
def test_an_open_statement_is_stopped_at_its_next_page(harness: Harness, trigger: str) -> None:
    change, reason = TRIGGERS[trigger]
    with grpc.insecure_channel(harness.address) as channel, FabricClient(harness.address) as app:
        statement = app.open_statement("shop", SQL, page_rows=100)
        first = statement.fetch()
        assert first is not None and first.column("id").to_pylist() == list(range(1, 101))
        executed = len(harness.executed)
        change(Admin(channel), harness)
        with pytest.raises(SelectionChanged) as stopped:
            statement.fetch()
        assert stopped.value.message.startswith("the selection changed: ")
        assert reason in stopped.value.message
        assert len(harness.executed) == executed, "nothing more reached the source"
    figures = harness.engine.snapshot()
    assert figures["purge_statement_revoked"] == 1 and figures["open_statements"] == 0


def test_the_caller_sees_failed_precondition_with_its_code(harness: Harness) -> None:
    with grpc.insecure_channel(harness.address) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        query = query_pb2.ExecuteRequest(connection="shop", sql=SQL)
        first = stub.OpenStatement(
            query_pb2.OpenStatementRequest(query=query, page_rows=10), timeout=30
        )
        unselect_orders(Admin(channel), harness)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Fetch(query_pb2.FetchRequest(statement_id=first.statement_id), timeout=30)
    error: grpc.Call = failed.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(error.trailing_metadata() or ())[ERROR_CODE_KEY] == "selection_changed"
    assert "the selection changed" in (error.details() or "")


@pytest.mark.parametrize("trigger", TRIGGERS.keys())
def test_an_execute_stream_is_stopped_at_its_next_batch(harness: Harness, trigger: str) -> None:
    change, reason = TRIGGERS[trigger]
    with grpc.insecure_channel(harness.address) as channel, FabricClient(harness.address) as app:
        batches = app.query_batches("shop", LONG)
        received = batches.read_next_batch().num_rows
        executed = len(harness.executed)
        change(Admin(channel), harness)
        with pytest.raises(SelectionChanged, match="the selection changed") as stopped:
            for batch in batches:
                received += batch.num_rows
        assert reason in stopped.value.message
        assert received < LONG_ROWS, "the stream did not run to its end"
        assert len(harness.executed) == executed
    assert harness.engine.snapshot()["purge_stream_revoked"] == 1


def test_an_unrelated_change_leaves_running_queries_alone(harness: Harness) -> None:
    with grpc.insecure_channel(harness.address) as channel, FabricClient(harness.address) as app:
        statement = app.open_statement("shop", SQL, page_rows=5_000)
        batches = app.query_batches("shop", SQL)
        received = batches.read_next_batch().num_rows
        unrelated_change(Admin(channel), harness)
        received += sum(batch.num_rows for batch in batches)
        paged = sum(page.num_rows for page in statement)
    assert received == paged == ORDERS
    figures = harness.engine.snapshot()
    assert figures["purge_stream_revoked"] == figures["purge_statement_revoked"] == 0


def test_removing_a_stage_configuration_stops_that_stage_only(harness: Harness) -> None:
    path = pb.SettingValue(string_value=path_of(harness))
    with grpc.insecure_channel(harness.address) as channel:
        admin = Admin(channel)
        admin.call(
            admin.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="staged",
                kind="duckdb",
                stages=[
                    pb.StageConfig(stage="development", settings={"path": path}),
                    pb.StageConfig(stage="production", settings={"path": path}),
                ],
            ),
        )
        admin.call(
            admin.catalog.Select,
            pb.SelectRequest(connection="staged", tables=[pb.TableSelection(table="orders")]),
        )
        with (
            FabricClient(harness.address, metadata=stage("development")) as dev,
            FabricClient(harness.address, metadata=stage("production")) as prod,
        ):
            in_dev = dev.open_statement("staged", SQL, page_rows=100)
            in_prod = prod.open_statement("staged", SQL, page_rows=100)
            assert in_dev.fetch() is not None and in_prod.fetch() is not None
            admin.call(
                admin.connections.UpdateConnection,
                pb.UpdateConnectionRequest(name="staged", remove_stages=["production"]),
            )
            with pytest.raises(SelectionChanged, match="no configuration for stage 'production'"):
                in_prod.fetch()
            rest = in_dev.fetch()
            assert rest is not None and rest.column("id").to_pylist() == list(range(101, 201))
