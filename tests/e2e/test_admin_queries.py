"""AdminService on a gateway that runs its own queries (`--role all`, no bus): the query
held at its source's door is listed, with its request id and shape, and an
administrator's cancel ends the call with CANCELLED while the source is released."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from fabric.client import FabricClient
from fabric.errors import InvalidArgument, NotFound
from fabric.proto_values import params_to_proto
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_query_held_at_its_source_is_listed_and_cancelled(harness: Harness) -> None:
    harness.gate.clear()  # queries wait at the source's door
    outcome: list[Any] = []

    def call() -> None:
        with grpc.insecure_channel(harness.address) as channel:
            stream = pb_grpc.QueryServiceStub(channel).Execute(
                pb.ExecuteRequest(
                    connection="shop",
                    sql="SELECT id FROM orders WHERE amount > :floor AND note <> 'x-secret'",
                    params=params_to_proto({"floor": 12.5}),
                ),
                metadata=[("x-request-id", "held-1")],
                timeout=30,
            )
            try:
                outcome.append(list(stream))
            except grpc.RpcError as error:
                outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        with FabricClient(harness.address, timeout=10) as admin:
            _wait(lambda: len(admin.list_running_queries().queries) == 1, "the query to run")
            listed = admin.list_running_queries()
            (query,) = listed.queries
            assert list(listed.replicas) == ["local"]
            assert (query.request_id, query.connection, query.kind, query.protocol) == (
                "held-1",
                "shop",
                "stream",
                "grpc",
            )
            assert query.sql_shape == "SELECT id FROM orders WHERE amount > :floor AND note <> ?"
            assert query.id.startswith("local:") and query.elapsed_seconds >= 0
            with pytest.raises(InvalidArgument):
                admin.cancel_query("nonsense")
            assert admin.cancel_query(query.id) == "local"
            caller.join(timeout=10)
            (error,) = outcome
            assert isinstance(error, grpc.RpcError)
            assert error.code() == grpc.StatusCode.CANCELLED
            assert "administrator cancelled" in (error.details() or "")
            _wait(lambda: not admin.list_running_queries().queries, "the list to empty")
            with pytest.raises(NotFound):
                admin.cancel_query(query.id)
    finally:
        harness.gate.set()
        caller.join(timeout=10)
