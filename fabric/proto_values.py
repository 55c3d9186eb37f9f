"""Parameter values between protobuf `Value` and Python, exact both ways."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from fabric.errors import InvalidArgument
from fabric.v1 import query_pb2 as pb


def from_proto(name: str, value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    try:
        if kind is None or kind == "null_value":
            return None
        if kind == "bool_value":
            return value.bool_value
        if kind == "int_value":
            return value.int_value
        if kind == "double_value":
            return value.double_value
        if kind == "string_value":
            return value.string_value
        if kind == "bytes_value":
            return value.bytes_value
        if kind == "decimal_value":
            number = Decimal(value.decimal_value)
            if not number.is_finite():
                raise InvalidOperation
            return number
        if kind == "date_value":
            return dt.date.fromisoformat(value.date_value)
        if kind == "time_value":
            return dt.time.fromisoformat(value.time_value)
        if kind == "timestamp_value":
            return dt.datetime.fromisoformat(value.timestamp_value)
    except (ValueError, InvalidOperation):
        # The value itself stays out of the message: it may be personal data.
        raise InvalidArgument(
            f"parameter {name!r} is not a valid {kind.removesuffix('_value')}"
        ) from None
    raise InvalidArgument(f"parameter {name!r} has an unsupported kind {kind!r}")


def params_from_proto(params: Mapping[str, pb.Value]) -> dict[str, Any]:
    return {name: from_proto(name, value) for name, value in params.items()}


def to_proto(name: str, value: Any) -> pb.Value:
    if value is None:
        return pb.Value(null_value=True)
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return pb.Value(int_value=value)
        return pb.Value(decimal_value=str(value))
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.Value(bytes_value=bytes(value))
    if isinstance(value, Decimal):
        return pb.Value(decimal_value=str(value))
    if isinstance(value, dt.datetime):
        return pb.Value(timestamp_value=value.isoformat())
    if isinstance(value, dt.date):
        return pb.Value(date_value=value.isoformat())
    if isinstance(value, dt.time):
        return pb.Value(time_value=value.isoformat())
    raise InvalidArgument(
        f"parameter {name!r} has type {type(value).__name__}, which Fabric cannot bind; "
        "use None, bool, int, float, str, bytes, Decimal, date, time or datetime"
    )


def params_to_proto(params: Mapping[str, Any] | None) -> dict[str, pb.Value]:
    return {name: to_proto(name, value) for name, value in (params or {}).items()}
