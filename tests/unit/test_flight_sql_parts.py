"""The Flight SQL door's parts on their own: `?` renaming, parameter binding, FlightData
framing, call-header options, SqlInfo kept in step with the function allow-list."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from fabric.api.flight.options import query_options
from fabric.api.flight.parameters import bind_parameters, parameter_names, parameter_schema
from fabric.api.flight.sql_info import (
    CONSTRUCTS,
    DATETIME_FUNCTIONS,
    NUMERIC_FUNCTIONS,
    STRING_FUNCTIONS,
    SYSTEM_FUNCTIONS,
)
from fabric.api.flight.wire import flight_data, read_flight_stream
from fabric.errors import InvalidArgument, QueryRejected
from fabric.query.compiler.positional import named_from_positional
from fabric.query.functions import SCALARS
from fabric.results.ipc import IpcChunker
from fabric.v1 import flight_pb2 as fl


def test_positional_parameters_are_renamed_in_text_order_outside_literals() -> None:
    sql = "SELECT a FROM t WHERE a = ? AND b = '?' -- ?\n AND c = ? AND \"d?\" = ?"
    named, count = named_from_positional(sql, 1_000)
    assert count == 3
    assert named == (
        "SELECT a FROM t WHERE a =  :p1  AND b = '?' -- ?\n AND c =  :p2  AND \"d?\" =  :p3 "
    )
    assert named_from_positional("SELECT :x FROM t", 1_000) == ("SELECT :x FROM t", 0)
    with pytest.raises(QueryRejected, match="not both"):
        named_from_positional("SELECT a FROM t WHERE a = ? AND b = :b", 1_000)
    with pytest.raises(QueryRejected, match="longer than 10 characters"):
        named_from_positional("SELECT ? FROM t", 10)


def test_parameters_bind_by_name_or_by_position() -> None:
    names = parameter_names(("id", "since", "id"))
    assert names == ("id", "since")
    assert parameter_schema(names).names == ["id", "since"]
    since = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    by_name = pa.table({"since": [since], "id": [7]})
    by_position = pa.table({"0": [7], "1": [since]})
    assert bind_parameters(names, by_name) == {"id": 7, "since": since}
    assert bind_parameters(names, by_position) == {"id": 7, "since": since}


@pytest.mark.parametrize(
    ("array", "value"),
    [
        (pa.array([None], pa.int64()), None),
        (pa.array([True]), True),
        (pa.array([2**63], pa.uint64()), 2**63),
        (pa.array([1.5], pa.float32()), 1.5),
        (pa.array(["ünï"], pa.large_string()), "ünï"),
        (pa.array([b"\x00\x01"]), b"\x00\x01"),
        (pa.array([Decimal("12.34")], pa.decimal128(10, 2)), Decimal("12.34")),
        (pa.array([dt.date(2024, 2, 29)]), dt.date(2024, 2, 29)),
        (pa.array([dt.time(1, 2, 3)], pa.time64("us")), dt.time(1, 2, 3)),
        (pa.array([1_000], pa.timestamp("ns")), dt.datetime(1970, 1, 1, 0, 0, 0, 1)),
        (pa.array(["x"]).dictionary_encode(), "x"),
    ],
)
def test_arrow_values_become_python_values(array: pa.Array, value: object) -> None:
    assert bind_parameters(("p",), pa.table({"p": array})) == {"p": value}


def test_unbindable_parameters_are_refused_without_their_value() -> None:
    with pytest.raises(InvalidArgument, match="one row"):
        bind_parameters(("p",), pa.table({"p": [1, 2]}))
    with pytest.raises(InvalidArgument, match="1 parameter"):
        bind_parameters(("p",), pa.table({"a": [1], "b": [2]}))
    with pytest.raises(InvalidArgument, match="list<item: int64>") as caught:
        bind_parameters(("p",), pa.table({"p": [[41, 42]]}))
    assert "41" not in caught.value.message
    with pytest.raises(InvalidArgument, match="nanoseconds"):
        bind_parameters(("p",), pa.table({"p": pa.array([1_001], pa.timestamp("ns"))}))


def test_flight_data_is_what_protobuf_writes_and_reads_back() -> None:
    table = pa.table({"id": [1, 2, 3], "name": ["a", None, "ü"]})
    chunker = IpcChunker(table.schema)
    messages = [chunker.schema_message(), *chunker.batch_messages(table.to_batches()[0])]
    encoded = [flight_data(m) for m in messages]
    assert flight_data(chunker.end_of_stream()) is None
    parsed = [fl.FlightData.FromString(e) for e in encoded if e is not None]
    for data, raw in zip(parsed, encoded, strict=True):
        assert data.SerializeToString() == raw  # the bytes protobuf itself would write
    assert read_flight_stream(parsed).equals(table)
    with pytest.raises(InvalidArgument, match="no Arrow schema"):
        read_flight_stream([fl.FlightData()])


def test_options_come_from_headers_and_bad_ones_are_named() -> None:
    options = query_options(
        [("X-Fabric-Connection", "shop"), ("x-fabric-cache-ttl", "30"), ("x-fabric-max-rows", "9")]
    )
    assert (options.connection, options.cache_ttl, options.max_rows, options.timeout) == (
        "shop",
        30.0,
        9,
        None,
    )
    for header, value in (
        ("x-fabric-timeout", "nan"),
        ("x-fabric-max-rows", "9" * 40),
        ("x-fabric-cache-ttl", "inf"),
    ):
        with pytest.raises(InvalidArgument, match=header) as caught:
            query_options([(header, value)])
        assert value not in caught.value.message
    with pytest.raises(InvalidArgument, match="once"):
        query_options([("x-fabric-connection", "a"), ("x-fabric-connection", "b")])


def test_sql_info_lists_every_allowed_function_once() -> None:
    groups = [NUMERIC_FUNCTIONS, STRING_FUNCTIONS, DATETIME_FUNCTIONS, SYSTEM_FUNCTIONS]
    listed = [cls for group in groups for cls in group]
    assert len(listed) == len(set(listed))
    assert set(listed) | CONSTRUCTS == SCALARS
