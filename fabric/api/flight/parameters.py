"""Flight SQL parameters as Fabric's named parameters.

The mapping (README, "Flight SQL"):

- A prepared statement's text may name its parameters (`:name`, Fabric SQL) or write
  `?`; each `?` becomes `:p1`, `:p2`, ... in text order (`named_from_positional`).
- Its parameter schema lists one field per distinct name, in order of first
  appearance, typed as the query implies (the column a parameter is compared with,
  `fabric.query.compiler.param_types`), else `null`: any value binds, and Fabric binds
  it with the type it has.
- The client binds one row of an Arrow record batch (DoPut). When every column of the
  batch is named after a parameter, columns bind by name (ADBC does this for a
  dict); otherwise the n-th column binds the n-th parameter of the schema, and the
  column count must match.
- Values come out of Arrow as Python values the engine binds: null, bool, integers,
  floats, text, binary, decimals, dates, times and timestamps (with their zone, if any).
  Other types (lists, structs, intervals, ...) are refused with the parameter named.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from fabric.errors import InvalidArgument

_TEMPORAL_UNITS = {"s", "ms", "us"}


def parameter_names(placeholders: Sequence[str]) -> tuple[str, ...]:
    """The distinct names of a compiled statement's placeholders, in order of first use."""
    return tuple(dict.fromkeys(placeholders))


def parameter_schema(
    names: Sequence[str], types: Mapping[str, pa.DataType | None] | None = None
) -> pa.Schema:
    """What a client is told to bind: one nullable field per name, of the type the query
    implies for it, or null (unknown)."""
    known = types or {}
    return pa.schema([pa.field(name, known.get(name) or pa.null()) for name in names])


def bind_parameters(names: Sequence[str], table: pa.Table) -> dict[str, Any]:
    """The values of one bound row, by parameter name (see the module docstring)."""
    if table.num_rows != 1:
        raise InvalidArgument(
            f"bind exactly one row of parameters per execution (got {table.num_rows}); "
            "run the query once per row instead"
        )
    columns = table.column_names
    if columns and set(columns) <= set(names) and len(set(columns)) == len(columns):
        order = columns
    elif len(columns) == len(names):
        order = list(names)
    else:
        raise InvalidArgument(
            f"the query takes {len(names)} parameter(s) and {len(columns)} were bound; bind "
            "one value per parameter, by position or by the names of the parameter schema"
        )
    return {name: _python_value(name, table.column(index)) for index, name in enumerate(order)}


def _python_value(name: str, column: pa.ChunkedArray) -> Any:
    """The value of a one-row column as the engine binds it."""
    kind = column.type
    scalar = column[0]
    if not scalar.is_valid:
        return None
    if pa.types.is_dictionary(kind):
        return _python_value(name, pa.chunked_array([column.combine_chunks().dictionary_decode()]))
    if (
        pa.types.is_boolean(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_date(kind)
    ):
        value = scalar.as_py()
        return float(value) if pa.types.is_float16(kind) else value
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind):
        if kind.unit not in _TEMPORAL_UNITS:
            # Nanoseconds: Python's datetime and time stop at microseconds, so the value
            # is taken at that precision, and refused if that would change it.
            target = pa.timestamp("us", kind.tz) if pa.types.is_timestamp(kind) else pa.time64("us")
            try:
                scalar = column.cast(target, safe=True)[0]
            except pa.ArrowInvalid:
                raise InvalidArgument(
                    f"parameter {name!r} has nanoseconds, which Fabric cannot bind; "
                    "round it to microseconds"
                ) from None
        value = scalar.as_py()
        if isinstance(value, dt.datetime | dt.time):
            return value
    raise InvalidArgument(
        f"parameter {name!r} is of Arrow type {kind}, which Fabric cannot bind; use null, "
        "bool, integers, floats, text, binary, decimals, dates, times or timestamps"
    )
