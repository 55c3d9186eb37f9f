"""Arrow tables as text for a terminal: an aligned table, CSV or JSON lines."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def format_table(table: pa.Table, max_width: int = 40) -> str:
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    headers = table.column_names
    widths = [
        min(max_width, max([len(h)] + [len(r[i]) for r in rows])) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), "-+-".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def write_result(table: pa.Table, fmt: str) -> None:
    if fmt == "table":
        print(format_table(table))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        sys.stdout.write(sink.getvalue().to_pybytes().decode())
    else:
        for row in table.to_pylist():
            print(json.dumps(row, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
