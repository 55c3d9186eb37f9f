"""Hostile requests over the wire: refused with INVALID_ARGUMENT or NOT_FOUND and a short
message that repeats neither the query's literals nor an over-long name; NUL bytes and
resource bombs never reach the source; a result stops at the byte cap on every path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from fabric.client import FabricClient
from fabric.errors import MAX_MESSAGE_LENGTH
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness, start_harness

SECRET = "secret-literal-5d1e"


def execute(harness: Harness, connection: str, sql: str) -> grpc.RpcError:
    with grpc.insecure_channel(harness.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Execute(pb.ExecuteRequest(connection=connection, sql=sql)))
    return caught.value


def test_a_long_chain_is_refused_with_a_short_message(harness: Harness) -> None:
    error = execute(harness, "shop", "SELECT id" + "[1]" * 2_000 + " FROM orders")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chains" in (error.details() or "") and len(error.details() or "") < 200
    assert harness.executed == []


def test_a_collation_literal_is_not_echoed(harness: Harness) -> None:
    error = execute(harness, "shop", f"SELECT name COLLATE '{SECRET}' FROM customers")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert SECRET not in (error.details() or "")


def test_an_over_long_connection_name_gets_a_bounded_not_found(harness: Harness) -> None:
    error = execute(harness, "c" * 10_000, "SELECT id FROM orders")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details() or "") <= MAX_MESSAGE_LENGTH


# -- NUL bytes and resource bombs over the wire: refused before anything reaches the source --


def open_statement(harness: Harness, request: pb.ExecuteRequest) -> grpc.RpcError:
    with grpc.insecure_channel(harness.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.OpenStatement(pb.OpenStatementRequest(query=request))
    return caught.value


def test_nul_in_the_sql_is_invalid_argument_naming_its_position(harness: Harness) -> None:
    sql = f"SELECT id FROM orders WHERE note = '{SECRET}\x00'"
    for error in (
        execute(harness, "shop", sql),
        open_statement(harness, pb.ExecuteRequest(connection="shop", sql=sql)),
    ):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.details() or ""
        assert f"at position {sql.index(chr(0)) + 1}" in details and SECRET not in details
    assert harness.executed == []


def test_nul_in_a_text_parameter_is_invalid_argument_naming_the_parameter(
    harness: Harness,
) -> None:
    request = pb.ExecuteRequest(
        connection="shop",
        sql="SELECT id FROM orders WHERE note = :note",
        params={"note": pb.Value(string_value=f"{SECRET}\x00")},
    )
    with grpc.insecure_channel(harness.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Execute(request))
    for error in (caught.value, open_statement(harness, request)):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.details() or ""
        assert "parameter 'note' contains a NUL" in details and SECRET not in details
    assert harness.executed == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT CAST(note AS char(10000000)) AS n FROM orders",
        "SELECT repeat(note, 100000) AS n FROM orders",
        "SELECT string_agg(note, ',') AS n FROM orders",
        "SELECT replace(note, 'n', note) AS n FROM orders",
    ],
    ids=["padded-cast", "repeat", "uncut-aggregate", "replace-by-a-column"],
)
def test_a_resource_bomb_is_invalid_argument_and_never_runs(harness: Harness, sql: str) -> None:
    error = execute(harness, "shop", sql)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000000" not in (error.details() or "")
    assert harness.executed == []


@pytest.fixture
def byte_capped(tmp_path: Path) -> Iterator[Harness]:
    """A gateway whose results stop at 64 KiB of Arrow data."""
    h = start_harness(tmp_path, max_result_bytes=64 * 1024)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def test_every_way_to_read_a_result_stops_at_the_byte_cap(byte_capped: Harness) -> None:
    sql = "SELECT id, note, amount FROM orders ORDER BY id"  # 20,000 rows, ~600 KiB
    with FabricClient(byte_capped.address) as client:
        whole = client.execute("shop", sql, max_bytes=1 << 30)  # capped by the gateway
        assert whole.summary.truncated and 0 < whole.table.num_rows < 20_000
        assert whole.table.nbytes <= 64 * 1024
        assert whole.table.column("id").to_pylist() == list(range(1, whole.table.num_rows + 1))
        smaller = client.execute("shop", sql, max_bytes=8 * 1024)
        assert smaller.summary.truncated and smaller.table.num_rows < whole.table.num_rows
        assert smaller.table.nbytes <= 8 * 1024
        streamed = client.query_batches("shop", sql).read_all()
        assert streamed.num_rows == whole.table.num_rows
        with client.open_statement("shop", sql, page_rows=500) as statement:
            paged = pa.concat_tables(list(statement))
            assert statement.summary is not None and statement.summary.truncated
        # Pages cut the batches elsewhere, so the count may differ by a row's bytes.
        assert paged.nbytes <= 64 * 1024 and paged.num_rows > whole.table.num_rows * 0.99
        assert paged.column("id").to_pylist() == list(range(1, paged.num_rows + 1))
        cached = client.execute("shop", sql, cache_ttl=60)
        again = client.execute("shop", sql, cache_ttl=60)
        assert cached.summary.truncated and not again.summary.from_cache
    with grpc.insecure_channel(byte_capped.address) as channel:
        chunks = list(
            pb_grpc.QueryServiceStub(channel).Preview(
                pb.PreviewRequest(connection="shop", entity="orders", limit=50_000)
            )
        )
    assert chunks[-1].summary.truncated
    truncated = byte_capped.engine.metrics.registry.get_sample_value(
        "fabric_results_truncated_total", {"reason": "bytes"}
    )
    assert truncated == 7
