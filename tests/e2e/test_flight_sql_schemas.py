"""What a Flight SQL client learns before it runs a query: the parameter schema of a
prepared statement (typed from the query) and the result schema (GetSchema), through
the ADBC Flight SQL driver and pyarrow's Flight client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from fabric.api.flight.wire import pack
from fabric.client import FabricClient
from fabric.v1 import flight_sql_pb2 as sql
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.flight_clients import FlightClient, connect

HEADERS = {"x-fabric-connection": "shop"}
ORDERS = "SELECT id, customer_id, amount, placed_at, note FROM orders WHERE id < :top"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path, flight=True)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def test_a_prepared_statement_types_its_parameters_from_the_query(harness: Harness) -> None:
    with connect(harness.gateway.flight_uri) as conn, conn.cursor() as cur:
        schema = cur.adbc_prepare(
            "SELECT name FROM customers WHERE id = ? AND country <> ? AND ? IS NOT NULL"
        )
        assert schema is not None
        table = conn.adbc_get_table_schema("customers", catalog_filter="shop")
        assert schema.names == ["p1", "p2", "p3"]
        assert schema.field("p1").type == table.field("id").type == pa.int32()
        assert schema.field("p2").type == table.field("country").type == pa.string()
        assert schema.field("p3").type == pa.null()  # nothing in the query tells
        cur.execute(
            "SELECT name FROM customers WHERE id = ? AND country <> ? AND ? IS NOT NULL",
            (3, "XX", 1),
        )
        assert cur.fetchall() == [("customer 3",)]


def test_get_schema_describes_a_query_before_it_runs_once_at_the_source(
    harness: Harness,
) -> None:
    with FabricClient(harness.address, timeout=30) as client:
        expected = client.query("shop", ORDERS, {"top": 10}).schema
    ran = len(harness.executed)
    command = sql.CommandStatementQuery(query=ORDERS)
    descriptor = flight.FlightDescriptor.for_command(pack(command))
    with FlightClient(harness.gateway.flight_uri, HEADERS) as client:
        schema = client.client.get_schema(descriptor, client.options).schema
        assert schema.names == expected.names
        assert schema.types == expected.types
        # Described at the source once (capped, the parameter null), then answered from
        # memory: the second ask reaches no source.
        assert len(harness.executed) == ran + 1
        assert harness.executed[-1][1] == (None,)
        assert harness.executed[-1][0].endswith("LIMIT 2")
        assert client.client.get_schema(descriptor, client.options).schema == schema
        assert len(harness.executed) == ran + 1


def test_adbc_execute_schema_of_a_query_that_ran_reaches_no_source(harness: Harness) -> None:
    text = ORDERS.replace(":top", "?")
    with connect(harness.gateway.flight_uri) as conn:
        with conn.cursor() as cur:
            # Never described nor run: the driver is told the schema is not known.
            with pytest.raises(adbc_driver_manager.NotSupportedError):
                cur.adbc_execute_schema(text)
            assert cur.description is None  # ADBC's DBAPI describes only after execute
            cur.execute(text, (10,))
            ran = cur.fetch_arrow_table()
        executed = len(harness.executed)
        with conn.cursor() as cur:
            schema = cur.adbc_execute_schema(text)
        assert schema.names == ran.schema.names
        assert schema.types == ran.schema.types
        assert len(harness.executed) == executed


def test_a_prepared_statement_carries_its_result_schema_once_known(harness: Harness) -> None:
    uri = harness.gateway.flight_uri
    text = "SELECT id, name FROM customers WHERE id = :id"
    with FlightClient(uri, HEADERS) as client:
        create = sql.ActionCreatePreparedStatementRequest(query=text)
        (body,) = client.action("CreatePreparedStatement", pack(create))
        first = _created(body)
        assert first.dataset_schema == b""  # not known yet, and not asked of the source
        assert harness.executed == []
        command = sql.CommandPreparedStatementQuery(
            prepared_statement_handle=first.prepared_statement_handle
        )
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        schema = client.client.get_schema(descriptor, client.options).schema
        assert schema.names == ["id", "name"]
        assert schema.field("id").type == pa.int32()
        assert len(harness.executed) == 1
        # Prepared again: the result schema comes with the statement, from memory.
        (body,) = client.action("CreatePreparedStatement", pack(create))
        again = _created(body)
        assert pa.ipc.read_schema(pa.py_buffer(again.dataset_schema)) == schema
        assert pa.ipc.read_schema(pa.py_buffer(again.parameter_schema)).types == [pa.int32()]
        assert len(harness.executed) == 1


def test_get_schema_checks_the_query_like_execute(harness: Harness) -> None:
    command = sql.CommandStatementQuery(query="SELECT email FROM customers")
    descriptor = flight.FlightDescriptor.for_command(pack(command))
    with (
        FlightClient(harness.gateway.flight_uri, HEADERS) as client,
        pytest.raises(pa.ArrowInvalid, match=r"invalid argument.*not selected"),
    ):
        client.client.get_schema(descriptor, client.options)
    assert harness.executed == []


def _created(body: bytes) -> sql.ActionCreatePreparedStatementResult:
    from google.protobuf import any_pb2

    wrapped = any_pb2.Any.FromString(body)
    result = sql.ActionCreatePreparedStatementResult()
    assert wrapped.Unpack(result)
    return result
