"""The access log: one structured line per call, with the request id the caller sent (or
a new one), echoed back with the result and with an error; never a value.

A real gateway (gRPC and Flight SQL) over a DuckDB file, called over real channels; the
lines are read as the JSON formatter writes them."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fabric.observability.logging import JsonFormatter
from fabric.proto_values import params_to_proto
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.flight_clients import connect

EXECUTE = "/fabric.v1.QueryService/Execute"
SECRET_NAME = "Zebulon Quattlebaum"
GENERATED = re.compile(r"[0-9a-f]{32}")


class Lines(logging.Handler):
    """The access log's lines, formatted as FABRIC_LOG_FORMAT=json writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def of(self, method: str, count: int = 1) -> list[dict[str, Any]]:
        """The lines of `method` once there are `count` of them: a line is written as its
        call ends on the server, which may be just after the client has its answer."""
        deadline = time.monotonic() + 10
        while True:
            found = [entry for entry in self.parsed() if entry["method"] == method]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"{count} access-log lines of {method} never came: {found}")
            time.sleep(0.005)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("fabric.access")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path, flight=True)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def _metadata(pairs: Any) -> dict[str, str]:
    return {key: value for key, value in pairs or ()}


def _execute(address: str, sql: str, params: dict[str, Any], *metadata: tuple[str, str]) -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        request = pb.ExecuteRequest(connection="shop", sql=sql, params=params_to_proto(params))
        call = stub.Execute(request, metadata=metadata, timeout=30)
        chunks = list(call)
        return call, chunks


def test_a_call_is_one_line_with_the_callers_request_id_echoed_and_no_value(
    harness: Harness, lines: Lines
) -> None:
    sql = "SELECT id, name FROM customers WHERE name <> :name AND country = 'FR'"
    call, chunks = _execute(
        harness.address, sql, {"name": SECRET_NAME}, ("x-request-id", "checkout-7f3a")
    )
    assert _metadata(call.trailing_metadata())["x-request-id"] == "checkout-7f3a"
    summary = chunks[-1].summary
    (line,) = lines.of(EXECUTE)
    sent = sum(len(chunk.arrow_ipc) for chunk in chunks)
    assert line["logger"] == "fabric.access"
    assert {k: line[k] for k in ("request_id", "protocol", "status", "tenant", "stage")} == {
        "request_id": "checkout-7f3a",
        "protocol": "grpc",
        "status": "OK",
        "tenant": "default",
        "stage": "development",
    }
    assert (line["principal"], line["connection"]) == ("local", "shop")
    assert line["rows"] == summary.rows == 33 and line["bytes"] == sent > 0
    assert line["from_cache"] is False and line["duration_ms"] > 0
    assert re.fullmatch(r"[0-9a-f]{16,}", line["fingerprint"])
    text = "\n".join(lines.lines)
    assert SECRET_NAME not in text and "'FR'" not in text and "customers" not in text


def test_a_missing_or_invalid_request_id_is_replaced_with_a_new_one(
    harness: Harness, lines: Lines
) -> None:
    sql = "SELECT count(*) AS n FROM orders"
    first, _ = _execute(harness.address, sql, {})
    second, _ = _execute(harness.address, sql, {}, ("x-request-id", "has spaces; and=more"))
    third, _ = _execute(harness.address, sql, {}, ("x-request-id", "x" * 129))
    echoed = [_metadata(c.trailing_metadata())["x-request-id"] for c in (first, second, third)]
    assert all(GENERATED.fullmatch(value) for value in echoed) and len(set(echoed)) == 3
    logged = [entry["request_id"] for entry in lines.of(EXECUTE, 3)]
    assert logged == echoed
    assert "has spaces" not in "\n".join(lines.lines)


def test_an_error_carries_the_request_id_and_its_status_is_logged(
    harness: Harness, lines: Lines
) -> None:
    literal = "'sensitive-literal-9'"
    with pytest.raises(grpc.RpcError) as raised:
        _execute(
            harness.address,
            f"SELECT salary FROM payroll WHERE note = {literal}",
            {},
            ("x-request-id", "req-err-1"),
        )
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _metadata(error.trailing_metadata())["x-request-id"] == "req-err-1"
    (line,) = lines.of(EXECUTE)
    assert (line["request_id"], line["status"], line["rows"]) == (
        "req-err-1",
        "INVALID_ARGUMENT",
        0,
    )
    assert "sensitive-literal-9" not in "\n".join(lines.lines)


def test_flight_sql_calls_are_logged_under_their_protocol(harness: Harness, lines: Lines) -> None:
    with connect(harness.gateway.flight_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM orders WHERE id <= 5")
        assert len(cur.fetchall()) == 5
    reads = lines.of("/arrow.flight.protocol.FlightService/DoGet")
    (read,) = [entry for entry in reads if entry["connection"] == "shop"]
    assert (read["protocol"], read["status"], read["rows"]) == ("flight_sql", "OK", 5)
    assert read["bytes"] > 0 and read["fingerprint"]
    flight = [entry for entry in lines.parsed() if entry["protocol"] == "flight_sql"]
    assert all(GENERATED.fullmatch(entry["request_id"]) for entry in flight)


def test_the_log_can_be_turned_off_and_ids_are_still_returned(tmp_path: Path, lines: Lines) -> None:
    h = start_harness(tmp_path, access_log=False)
    try:
        call, _ = _execute(
            h.address, "SELECT count(*) AS n FROM orders", {}, ("x-request-id", "r1")
        )
        assert _metadata(call.trailing_metadata())["x-request-id"] == "r1"
    finally:
        h.gateway.stop()
        h.store.close()
    assert lines.lines == []
