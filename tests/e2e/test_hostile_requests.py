"""Hostile requests over the wire: refused with INVALID_ARGUMENT or NOT_FOUND and a short
message that repeats neither the query's literals nor an over-long name."""

from __future__ import annotations

import grpc
import pytest

from fabric.errors import MAX_MESSAGE_LENGTH
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness

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
