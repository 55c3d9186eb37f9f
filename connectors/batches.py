"""Record-batch helpers every connector shares: slicing to the batch size, and the error
for a value its Arrow column cannot hold."""

from __future__ import annotations

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
