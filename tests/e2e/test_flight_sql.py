"""The Flight SQL door through real clients: the ADBC Flight SQL driver (DBAPI), pandas
and polars on top of it, and pyarrow's Flight client where ADBC makes no such call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import adbc_driver_manager
import grpc
import pandas as pd  # type: ignore[import-untyped]  # no stubs ship with pandas
import polars as pl
import pyarrow as pa
import pytest

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import FailedPrecondition
from fabric.query.engine import QueryEngine
from fabric.v1 import flight_pb2 as fl
from fabric.v1 import flight_pb2_grpc as fl_grpc
from fabric.v1 import flight_sql_pb2 as sql
from tests.e2e.conftest import Harness, start_harness, tenant_from_metadata
from tests.e2e.flight_clients import FlightClient, connect, fabric_code, grpc_code, message_of


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path, flight=True)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def uri(h: Harness) -> str:
    return h.gateway.flight_uri


# -- statements ---------------------------------------------------------------------------


def test_a_query_returns_what_execute_returns(harness: Harness) -> None:
    sql_text = "SELECT id, customer_id, amount, placed_at, note FROM orders ORDER BY id"
    with FabricClient(harness.address, timeout=30) as client:
        expected = client.query("shop", sql_text)
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cur.execute(sql_text)
        table = cur.fetch_arrow_table()
        cur.execute("SELECT COUNT(*) AS n FROM orders WHERE note IS NULL")
        assert cur.fetchall() == [(2_000,)]
    assert table.num_rows == 20_000
    assert table.equals(expected)
    assert len(harness.executed) == 3  # the gRPC call, then the two Flight SQL queries


def test_pandas_and_polars_read_through_adbc(harness: Harness) -> None:
    sql_text = "SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY country"
    with connect(uri(harness)) as conn:
        frame = pd.read_sql(sql_text, conn)
        polars_frame = pl.read_database(sql_text, connection=conn)
        with conn.cursor() as cur:
            cur.execute(sql_text)
            fetched = cur.fetch_df()
    expected = {"country": ["DE", "FR", "ÉIRE"], "n": [34, 33, 33]}
    assert frame.to_dict(orient="list") == expected
    assert fetched.to_dict(orient="list") == expected
    assert polars_frame.to_dict(as_series=False) == expected


def test_positional_and_named_parameters_bind(harness: Harness) -> None:
    since = dt.datetime(2024, 1, 1, 1, 0, tzinfo=dt.UTC)
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) AS n FROM orders WHERE placed_at >= ? AND amount > ? AND id < ?",
            (since, Decimal("10.00"), 5_000),
        )
        positional = cur.fetchall()
        # Bound by name: an Arrow batch whose columns are named after the parameters, in
        # any order (the ADBC Flight SQL driver itself refuses a dict).
        named = pa.record_batch({"top": [5_000], "low": [Decimal("10.00")], "since": [since]})
        cur.execute(
            "SELECT COUNT(*) AS n FROM orders WHERE placed_at >= :since AND amount > :low "
            "AND id < :top",
            named,
        )
        by_name = cur.fetchall()
        cur.execute(
            "SELECT COUNT(*) AS n FROM orders WHERE placed_at >= :since AND amount > :low "
            "AND id < :top",
            (since, Decimal("10.00"), 5_000),
        )
        by_position = cur.fetchall()
        cur.execute("SELECT name FROM customers WHERE country = ? AND id = ?", ("ÉIRE", 2))
        assert cur.fetchall() == [("customer 2",)]
        cur.execute("SELECT COUNT(*) AS n FROM orders WHERE note = ?", (None,))
        assert cur.fetchall() == [(0,)]
    with FabricClient(harness.address, timeout=30) as client:
        expected = client.query(
            "shop",
            "SELECT COUNT(*) AS n FROM orders WHERE placed_at >= :s AND amount > :a AND id < :t",
            {"s": since, "a": Decimal("10.00"), "t": 5_000},
        ).to_pylist()
    assert positional == by_name == by_position == [(expected[0]["n"],)]
    # Values are bound at the source, never written into the text.
    assert all("ÉIRE" not in text for text, _ in harness.executed)


def test_a_prepared_statement_compiles_once_runs_per_values_and_closes(
    harness: Harness,
) -> None:
    text = "SELECT name FROM customers WHERE id = :id AND country <> :skip"
    flight_door = harness.gateway.gateway.flight
    misses = harness.engine.statements.misses
    with connect(uri(harness)) as conn:
        with conn.cursor() as cur:
            schema = cur.adbc_prepare(text)
            assert schema is not None and schema.names == ["id", "skip"]
            names = []
            for customer in (1, 2, 3):
                cur.execute(text, (customer, "XX"))
                names += cur.fetchall()
            assert len(flight_door.prepared) == 1
        assert names == [("customer 1",), ("customer 2",), ("customer 3",)]
        assert harness.engine.statements.misses == misses + 1
        # Closing the cursor closes the prepared statement: its values are dropped.
        assert len(flight_door.prepared) == 0
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM customers WHERE id = :id", (7,))
            assert cur.fetchall() == [(7,)]
    assert [params for _, params in harness.executed[-4:]] == [
        (1, "XX"),
        (2, "XX"),
        (3, "XX"),
        (7,),
    ]


def test_parameter_mistakes_are_invalid_argument(harness: Harness) -> None:
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cases = [
            ("SELECT id FROM customers WHERE id = ?", (1, 2), "1 parameter(s) and 2 were bound"),
            (
                "SELECT id FROM customers WHERE id = :id",
                pa.record_batch({"other": [1], "more": [2]}),
                "1 parameter(s) and 2 were bound",
            ),
            ("SELECT id FROM customers WHERE id = ? AND id = :id", (1,), "not both"),
            ("SELECT id FROM customers WHERE id = :id", None, "missing parameter 'id'"),
        ]
        for text, params, says in cases:
            with pytest.raises(adbc_driver_manager.Error) as caught:
                cur.execute(text, params)
            assert grpc_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT, text
            assert says in message_of(caught.value), text
    assert harness.executed == []


# -- limits, cache, options ------------------------------------------------------------------


def test_the_row_limit_truncates_and_the_trailers_say_so(harness: Harness) -> None:
    with connect(uri(harness), headers={"x-fabric-max-rows": "7"}) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM orders ORDER BY id")
        assert cur.fetch_arrow_table().num_rows == 7
    # The summary QueryService sends at the end travels as trailing metadata here.
    with FlightClient(uri(harness), {"x-fabric-connection": "shop"}) as client:
        info = client.info(sql.CommandStatementQuery(query="SELECT id FROM orders"))
    ticket = fl.Ticket(ticket=info.endpoints[0].ticket.ticket)
    address = uri(harness).removeprefix("grpc://")
    with grpc.insecure_channel(address) as channel:
        call = fl_grpc.FlightServiceStub(channel).DoGet(
            ticket, metadata=(("x-fabric-max-rows", "5"),)
        )
        list(call)
        trailers = dict(call.trailing_metadata() or ())
    assert trailers["x-fabric-rows"] == "20000" and trailers["x-fabric-truncated"] == "false"
    with FlightClient(uri(harness), {"x-fabric-connection": "shop", "x-fabric-max-rows": "5"}) as c:
        info = c.info(sql.CommandStatementQuery(query="SELECT id FROM orders"))
    with grpc.insecure_channel(address) as channel:
        call = fl_grpc.FlightServiceStub(channel).DoGet(
            fl.Ticket(ticket=info.endpoints[0].ticket.ticket)
        )
        list(call)
        trailers = dict(call.trailing_metadata() or ())
    assert trailers["x-fabric-rows"] == "5" and trailers["x-fabric-truncated"] == "true"


def test_a_cache_lifetime_header_serves_repeats_from_memory(harness: Harness) -> None:
    text = "SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY country"
    with (
        connect(uri(harness), headers={"x-fabric-cache-ttl": "30"}) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(text)
        first = cur.fetch_arrow_table()
        cur.execute(text)
        second = cur.fetch_arrow_table()
        assert len(harness.executed) == 1 and first.equals(second)
        harness.clock.advance(31)
        cur.execute(text)
        assert cur.fetch_arrow_table().equals(first)
    assert len(harness.executed) == 2


def test_bad_option_headers_are_refused_by_name(harness: Harness) -> None:
    for header, value in (
        ("x-fabric-cache-ttl", "-1"),
        ("x-fabric-max-rows", "lots"),
        ("x-fabric-timeout", "0"),
    ):
        with connect(uri(harness), headers={header: value}) as conn, conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as caught:
                cur.execute("SELECT id FROM orders")
            assert grpc_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
            assert header in message_of(caught.value) and value not in message_of(caught.value)
    with connect(uri(harness), connection=None) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as caught:
            cur.execute("SELECT id FROM orders")
        assert "x-fabric-connection" in message_of(caught.value)
    assert harness.executed == []


# -- metadata --------------------------------------------------------------------------------


def test_objects_and_table_schemas_come_from_the_selection(harness: Harness) -> None:
    with connect(uri(harness)) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        schema = conn.adbc_get_table_schema("customers", catalog_filter="shop")
        types = conn.adbc_get_table_types()
    # prod_only has no settings for this token's stage: not a catalog it can query.
    assert [c["catalog_name"] for c in objects] == ["shop"]
    (db_schema,) = objects[0]["catalog_db_schemas"]
    tables = {t["table_name"]: t for t in db_schema["db_schema_tables"]}
    assert sorted(tables) == ["customers", "orders"]
    columns = [c["column_name"] for c in tables["customers"]["table_columns"]]
    assert columns == ["id", "name", "country"]  # the unselected email is not there
    assert schema.names == ["id", "name", "country"]
    assert schema.field("id").type == pa.int32() and not schema.field("id").nullable
    assert types == ["TABLE"]
    with connect(uri(harness), headers={"x-tenant": "other"}) as conn:
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
    assert [c["catalog_name"] for c in catalogs] == ["b_only", "shop"]
    assert harness.executed == []  # metadata never touches a source


def test_keys_composite_and_ordered(tmp_path: Path) -> None:
    import duckdb

    from fabric.app.parts import catalog_manager

    h = start_harness(tmp_path, flight=True)
    try:
        path = tmp_path / "lines.duckdb"
        with duckdb.connect(str(path)) as con:
            con.execute("""
                CREATE TABLE lines (order_no INTEGER, line_no INTEGER, sku VARCHAR,
                                    PRIMARY KEY (order_no, line_no));
                CREATE TABLE shipments (id INTEGER PRIMARY KEY, order_no INTEGER,
                    line_no INTEGER, FOREIGN KEY (order_no, line_no)
                    REFERENCES lines (order_no, line_no));
            """)
        manager = catalog_manager(h.store)
        manager.create_connection("default", "lines", "duckdb", {"*": {"path": str(path)}})
        manager.select("default", "lines", "development", "lines")
        manager.select("default", "lines", "development", "shipments")
        headers = {"x-fabric-connection": "lines"}
        with FlightClient(uri(h), headers) as client:
            pks = client.read(sql.CommandGetPrimaryKeys(catalog="lines", table="lines"))
            imported = client.read(sql.CommandGetImportedKeys(table="shipments"))
            exported = client.read(sql.CommandGetExportedKeys(catalog="lines", table="lines"))
            cross = client.read(
                sql.CommandGetCrossReference(pk_table="lines", fk_table="shipments")
            )
            none = client.read(sql.CommandGetCrossReference(pk_table="shipments", fk_table="lines"))
            orders_keys = client.read(sql.CommandGetImportedKeys(catalog="shop", table="orders"))
    finally:
        h.gateway.stop()
        h.store.close()
    assert [(r["column_name"], r["key_sequence"]) for r in pks.to_pylist()] == [
        ("order_no", 1),
        ("line_no", 2),
    ]
    pairs = [
        (
            r["pk_table_name"],
            r["pk_column_name"],
            r["fk_table_name"],
            r["fk_column_name"],
            r["key_sequence"],
        )
        for r in imported.to_pylist()
    ]
    assert pairs == [
        ("lines", "order_no", "shipments", "order_no", 1),
        ("lines", "line_no", "shipments", "line_no", 2),
    ]
    assert exported.to_pylist() == imported.to_pylist() == cross.to_pylist()
    assert none.num_rows == 0
    # orders.customer_id references customers, which is selected in shop.
    assert [(r["pk_table_name"], r["pk_column_name"]) for r in orders_keys.to_pylist()] == [
        ("customers", "id")
    ]


def test_sql_info_and_type_info(harness: Harness) -> None:
    with connect(uri(harness)) as conn:
        info = conn.adbc_get_info()
    assert info["vendor_name"] == "Fabric" and info["vendor_arrow_version"] == pa.__version__
    with FlightClient(uri(harness), {}) as client:
        rows = client.read(sql.CommandGetSqlInfo(info=[3, 8, 504, 509])).to_pylist()
        types = client.read(sql.CommandGetXdbcTypeInfo()).to_pylist()
        dates = client.read(sql.CommandGetXdbcTypeInfo(data_type=91)).to_pylist()
    values = {r["info_name"]: r["value"] for r in rows}
    assert values[3] is True  # read-only
    assert values[8] == 0  # no transactions
    assert values[504] == '"'
    assert "ROUND" in values[509] and "SQRT" in values[509]
    codes = [t["data_type"] for t in types]
    assert codes == sorted(codes) and {"BIGINT", "TEXT", "TIMESTAMP"} <= {
        t["type_name"] for t in types
    }
    assert [t["type_name"] for t in dates] == ["DATE"]


# -- refusals --------------------------------------------------------------------------------


def test_writes_transactions_and_substrait_are_refused_with_flight_sql_codes(
    harness: Harness,
) -> None:
    with connect(uri(harness)) as conn:
        with conn.cursor() as cur, pytest.raises(adbc_driver_manager.ProgrammingError) as write:
            cur.execute("DELETE FROM orders")
        assert grpc_code(write.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert fabric_code(write.value) == "query_rejected"
        statement = adbc_driver_manager.AdbcStatement(conn.adbc_connection)
        try:
            statement.set_sql_query("UPDATE orders SET note = 'x'")
            with pytest.raises(adbc_driver_manager.NotSupportedError) as update:
                statement.execute_update()
            assert grpc_code(update.value) == grpc.StatusCode.UNIMPLEMENTED
            assert "read-only" in message_of(update.value)
        finally:
            statement.close()
        with conn.cursor() as cur, pytest.raises(adbc_driver_manager.NotSupportedError) as plan:
            cur.execute(b"\x0a\x00")  # a (serialized) Substrait plan
        assert grpc_code(plan.value) == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(adbc_driver_manager.NotSupportedError):
            conn.adbc_connection.set_autocommit(False)  # the server offers no transactions
    with FlightClient(uri(harness), {}) as client:
        for action in ("BeginTransaction", "EndTransaction", "BeginSavepoint"):
            with pytest.raises(pa.ArrowNotImplementedError, match="read-only"):
                client.action(action, b"")
    assert harness.executed == []


# -- cancellation, lifecycle, metrics ------------------------------------------------------------


def test_cancel_flight_info_releases_a_started_result(harness: Harness) -> None:
    flight_door = harness.gateway.gateway.flight
    with FlightClient(uri(harness), {"x-fabric-connection": "shop"}) as client:
        info = client.info(sql.CommandStatementQuery(query="SELECT * FROM orders"))
        assert len(flight_door.started) == 1
        request = fl.CancelFlightInfoRequest(info=fl.FlightInfo.FromString(info.serialize()))
        (reply,) = client.action("CancelFlightInfo", request.SerializeToString())
        assert fl.CancelFlightInfoResult.FromString(reply).status == fl.CANCEL_STATUS_CANCELLED
        assert len(flight_door.started) == 0
        with pytest.raises(pa.ArrowKeyError, match="statement not found"):
            client.client.do_get(info.endpoints[0].ticket, client.options).read_all()
        with pytest.raises(pa.ArrowKeyError, match="statement not found"):
            client.action("CancelFlightInfo", request.SerializeToString())


def test_idle_prepared_statements_and_unread_results_are_dropped(harness: Harness) -> None:
    flight_door = harness.gateway.gateway.flight
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM customers WHERE id = ?", (3,))
        assert cur.fetchall() == [(3,)]
        with FlightClient(uri(harness), {"x-fabric-connection": "shop"}) as client:
            info = client.info(sql.CommandStatementQuery(query="SELECT id FROM orders"))
            assert len(flight_door.prepared) == 1 and len(flight_door.started) == 1
            harness.clock.advance(harness.engine.settings.statement_idle_limit + 1)
            assert flight_door.prepared.sweep() == 1 and flight_door.started.sweep() == 1
            with pytest.raises(pa.ArrowKeyError, match="statement not found"):
                client.client.do_get(info.endpoints[0].ticket, client.options).read_all()
        with pytest.raises(adbc_driver_manager.Error) as caught:
            cur.execute("SELECT id FROM customers WHERE id = ?", (4,))
        assert grpc_code(caught.value) == grpc.StatusCode.NOT_FOUND


def test_a_purged_connection_drops_its_flight_statements(harness: Harness) -> None:
    flight_door = harness.gateway.gateway.flight
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cur.adbc_prepare("SELECT id FROM customers WHERE id = :id")
        assert len(flight_door.prepared) == 1
        dropped = harness.engine.purge_connection("default", "shop")
        assert dropped["statements"] == 1 and len(flight_door.prepared) == 0


def test_metrics_label_queries_by_protocol(harness: Harness) -> None:
    with connect(uri(harness)) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM orders")
        cur.fetchall()
    with FabricClient(harness.address, timeout=30) as client:
        client.query("shop", "SELECT COUNT(*) AS n FROM orders")
    from prometheus_client import generate_latest

    text = generate_latest(harness.engine.metrics.registry).decode()
    assert 'fabric_queries_total{method="execute",outcome="ok",protocol="flight_sql"} 1.0' in text
    assert 'fabric_queries_total{method="execute",outcome="ok",protocol="grpc"} 1.0' in text


def test_a_flight_port_in_use_is_refused_not_shared(harness: Harness, tmp_path: Path) -> None:
    """grpc binds with SO_REUSEPORT unless told not to: a second gateway on the same
    Flight SQL port would start, and the kernel would split the calls between them."""
    taken = f"127.0.0.1:{harness.gateway.gateway.flight_port}"
    store = SqliteMetadataStore(tmp_path / "second.sqlite")
    engine = QueryEngine(store, Settings(home=tmp_path / "second", metrics_port=0))
    second = BackgroundGateway(
        assemble_gateway(engine, context_provider=tenant_from_metadata), flight_address=taken
    )
    try:
        with pytest.raises(FailedPrecondition, match=f"cannot listen on {taken} for Flight SQL"):
            second.start()
    finally:
        second.stop()
        store.close()
    with connect(uri(harness)) as conn, conn.cursor() as cur:  # the first still serves
        cur.execute("SELECT COUNT(*) AS n FROM customers")
        assert cur.fetchall() == [(100,)]
