"""The hostile-query suite (tests/unit/test_hostile_queries.py) through Flight SQL: every
text gets the same status and message as on QueryService.Execute, whether it comes as a
plain statement or is prepared; what the compiler refuses reaches no source on either
door (the few texts it lets through, the source refuses on both alike)."""

from __future__ import annotations

from collections.abc import Iterator

import adbc_driver_manager
import grpc
import pytest

from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.flight_clients import connect, grpc_code, message_of
from tests.unit.test_hostile_queries import HOSTILE_SHAPES, LITERAL_QUERIES, SECRET

CASES = {
    **{name: sql for name, (sql, _) in HOSTILE_SHAPES.items()},
    **LITERAL_QUERIES,
    "over-long": "SELECT id FROM orders WHERE note = '" + "x" * 200_000 + "'",
    "write": "DELETE FROM orders",
    "unselected-column": "SELECT email FROM customers",
    "system-catalog": "SELECT * FROM pg_catalog.pg_user",
    "two-statements": "SELECT 1; SELECT 2",
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = start_harness(tmp_path_factory.mktemp("hostile_flight"), flight=True)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def on_grpc(h: Harness, sql: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(h.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Execute(pb.ExecuteRequest(connection="shop", sql=sql)))
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize("sql", CASES.values(), ids=CASES.keys())
def test_a_hostile_text_gets_the_same_answer_as_on_execute(harness: Harness, sql: str) -> None:
    before = len(harness.executed)
    expected = on_grpc(harness, sql)
    grpc_runs = len(harness.executed) - before
    if expected[0] == grpc.StatusCode.INVALID_ARGUMENT:
        assert grpc_runs == 0
    else:  # compiled, and refused by the source itself
        assert expected[0] == grpc.StatusCode.FAILED_PRECONDITION and grpc_runs == 1
    with connect(harness.gateway.flight_uri) as conn:
        with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error) as prepared:
            cur.execute(sql)  # prepared first (CreatePreparedStatement)
        statement = adbc_driver_manager.AdbcStatement(conn.adbc_connection)
        try:
            statement.set_sql_query(sql)  # a plain statement (GetFlightInfo)
            with pytest.raises(adbc_driver_manager.Error) as plain:
                statement.execute_query()
        finally:
            statement.close()
    for caught in (prepared.value, plain.value):
        assert (grpc_code(caught), message_of(caught)) == expected
        assert SECRET not in message_of(caught) and "xxxx" not in str(caught)
    # Each Flight SQL path ran the text at the source exactly as often as Execute did.
    assert len(harness.executed) - before == 3 * grpc_runs
