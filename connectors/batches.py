"""Record-batch helpers every connector shares: slicing to the batch size, the error for
a value its Arrow column cannot hold, and decimal256 narrowed where the values allow."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow as pa

from fabric.errors import SourceQueryError


def slices(batch: pa.RecordBatch, max_rows: int) -> list[pa.RecordBatch]:
    """The batch cut into zero-copy slices of at most `max_rows` rows."""
    if batch.num_rows <= max_rows:
        return [batch]
    return [batch.slice(i, max_rows) for i in range(0, batch.num_rows, max_rows)]


def unrepresentable(column: int, name: str, arrow_type: pa.DataType) -> SourceQueryError:
    """A value-free error for a value of result column `column` (0-based) that `arrow_type`
    cannot hold exactly."""
    return SourceQueryError(
        f"result column #{column + 1} ({name!r}) holds a value that cannot be represented "
        f"exactly as {arrow_type}; cast or round it in the query (e.g. round(x, 10) or "
        "x::float8, or ::text)"
    )


def narrowed_decimals(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The result with each decimal256(p, s) column as decimal128(38, s) when the values
    of its first batch fit it: much of the Arrow world (polars, DuckDB, pandas) cannot read
    decimal256. Reads the first batch (a blocking call, made where reading is); a later
    value that does not fit fails the read, never rounded."""
    wide = [i for i, field in enumerate(schema) if pa.types.is_decimal256(field.type)]
    if not wide:
        return schema, batches
    first = next(batches, None)
    narrowed = schema
    for i in wide:
        scale = schema.field(i).type.scale
        if scale > 38:
            continue
        target = pa.decimal128(38, scale)
        if first is None or _fits(first.column(i), target):
            narrowed = narrowed.set(i, schema.field(i).with_type(target))
    if narrowed.equals(schema):
        return schema, itertools.chain([] if first is None else [first], batches)

    def conform(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = list(batch.columns)
        for i in wide:
            target = narrowed.field(i).type
            if target != schema.field(i).type:
                try:
                    arrays[i] = arrays[i].cast(target)  # safe: refuses any loss
                except (pa.ArrowException, ValueError):
                    raise unrepresentable(i, schema.field(i).name, target) from None
        return pa.RecordBatch.from_arrays(arrays, schema=narrowed)

    def stream() -> Iterator[pa.RecordBatch]:
        if first is not None:
            yield conform(first)
        for batch in batches:
            yield conform(batch)

    return narrowed, stream()


def _fits(values: pa.Array, target: pa.DataType) -> bool:
    try:
        values.cast(target)
    except (pa.ArrowException, ValueError):
        return False
    return True
