"""Arrow results as JSON: column names and types, and rows as arrays of JSON values.

JSON numbers are doubles in most readers (JavaScript's among them), so a value that
would lose precision as one travels as a string: decimals always, integers beyond 2^53.
NaN and the infinities (not JSON) are the strings "NaN", "Infinity", "-Infinity". Dates,
times and timestamps are ISO 8601 text, durations ISO 8601 durations in seconds, bytes
base64. Lists and structs nest; a map is a list of [key, value] pairs.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pyarrow as pa

from fabric.errors import InternalError

JSON_SAFE_INTEGER = 2**53 - 1
"""The largest integer a double holds exactly (JavaScript's Number.MAX_SAFE_INTEGER)."""


def json_value(value: Any) -> Any:
    """One value from `to_pylist`, as JSON can carry it without loss."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -JSON_SAFE_INTEGER <= value <= JSON_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"PT{value.total_seconds():g}S"
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    # A type to_pylist may return that is not handled above: say so, never str() it
    # (its text could be anything).
    raise InternalError(f"a result value of type {type(value).__name__} has no JSON form")


def columns(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def rows(batches: Iterable[pa.RecordBatch]) -> list[list[Any]]:
    """Every row of `batches` as a JSON array, column by column per batch (duplicate
    column names stay apart, unlike a row of dictionaries)."""
    result: list[list[Any]] = []
    for batch in batches:
        cols = [[json_value(v) for v in column.to_pylist()] for column in batch.columns]
        result.extend([list(row) for row in zip(*cols, strict=True)] if cols else [])
    return result


def read_ipc(data: bytes) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The schema and batches of one Arrow IPC stream."""
    reader = pa.ipc.open_stream(data)
    return reader.schema, list(reader)
