"""Query results as text, streamed batch by batch: an aligned table, vertical records,
CSV, a JSON array or JSON lines.

Every format writes a value the same way (`cell_text`): booleans `true`/`false`,
timestamps ISO 8601 (`2024-01-01T12:30:00+00:00`, fractional seconds only when there are
any, to the nanosecond), decimals exactly as stored, bytes as `\\x` and hex, nested
values as JSON. NULL is `NULL` in the table formats, an empty field in CSV (an empty
string is `""`) and `null` in JSON. JSON keeps numbers as numbers except decimals
(strings, to stay exact) and non-finite floats (the strings `NaN`, `Infinity`).

The table formats measure text in terminal cells (wide characters, CJK and emoji, take
two), show control characters escaped (`\\t`, `\\x1b`), never cut a value silently: a
value wider than its column continues on the next line, the column's right border marked
`…`, and a value with a line break continues marked `+` (as psql does).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import wcwidth

__all__ = [
    "FORMATS",
    "NULL_TEXT",
    "ResultWriter",
    "TextSink",
    "cell_text",
    "column_texts",
    "column_values",
    "display_width",
    "format_table",
    "open_writer",
    "write_result",
]

FORMATS = ("table", "vertical", "csv", "json", "jsonl")
NULL_TEXT = "NULL"
WRAP_MARK = "…"
NEWLINE_MARK = "+"
DEFAULT_MAX_WIDTH = 40
"""Display cells a table column takes at most on a terminal; longer values wrap."""

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_ESCAPES = {"\t": "\\t", "\r": "\\r"}


# -- one rendering of each value ------------------------------------------------------


def cell_text(value: Any) -> str | None:
    """A value as text, the same in every format; None for NULL."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, list | dict):
        return json.dumps(_json(value), ensure_ascii=False, allow_nan=False)
    return str(value)


def _json(value: Any) -> Any:
    """A value as JSON takes it (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else cell_text(value)
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, tuple):  # a map's (key, value) pairs
        return [_json(v) for v in value]
    return cell_text(value)


def _timestamps_ns(array: pa.Array) -> list[Any]:
    """Nanosecond timestamps as ISO 8601 text, every digit kept (Python's datetime
    stops at microseconds)."""
    unit_type: pa.TimestampType = array.type
    nanos = pc.cast(array, pa.int64()).to_pylist()
    # floor division: a time before 1970 is a negative count, and its nanoseconds still
    # count up from the microsecond below it
    split = [None if ns is None else divmod(ns, 1000) for ns in nanos]
    micro = pa.array(
        [None if p is None else p[0] for p in split], pa.timestamp("us", unit_type.tz)
    ).to_pylist()
    texts: list[Any] = []
    for value, parts in zip(micro, split, strict=True):
        if value is None or parts is None:
            texts.append(None)
            continue
        extra = parts[1]
        text = value.isoformat()
        if extra:
            head, sep, zone = _split_zone(text)
            if "." not in head:
                head += ".000000"
            text = f"{head}{extra:03d}{sep}{zone}"
        texts.append(text)
    return texts


def _split_zone(text: str) -> tuple[str, str, str]:
    """`2024-01-01T00:00:00.5+01:00` -> ('2024-01-01T00:00:00.5', '+', '01:00')."""
    for sign in ("+", "-"):
        at = text.rfind(sign, 19)
        if at != -1:
            return text[:at], sign, text[at + 1 :]
    return text, "", ""


def _python_values(array: pa.Array) -> list[Any]:
    if pa.types.is_timestamp(array.type) and array.type.unit == "ns":
        return _timestamps_ns(array)
    if pa.types.is_time64(array.type) and array.type.unit == "ns":
        array = pc.cast(array, pa.time64("us"), safe=False)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    values: list[Any] = array.to_pylist()
    return values


_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "+00:00", "Z"})


def _timestamp_texts(array: pa.Array) -> pa.Array | None:
    """`cell_text` of naive and UTC timestamps, computed by Arrow (the Python route
    builds a datetime per value). None for other zones (their offsets can have seconds)."""
    unit_type: pa.TimestampType = array.type
    tz = unit_type.tz
    if tz is not None and tz not in _UTC_NAMES:
        return None
    if unit_type.unit in ("s", "ms"):
        array = pc.cast(array, pa.timestamp("us", tz))
    text = pc.strftime(array, format="%Y-%m-%dT%H:%M:%S")
    if unit_type.unit == "ns":
        text = pc.replace_substring_regex(text, pattern=r"(\.\d{6})000$", replacement=r"\1")
    text = pc.replace_substring_regex(text, pattern=r"\.000000$", replacement="")
    if tz is not None:
        text = pc.binary_join_element_wise(text, "+00:00", "")
    return text


def _arrow_texts(array: pa.Array) -> pa.Array | None:
    """`cell_text` of each value computed by Arrow for the common types, or None."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_integer(kind) or pa.types.is_date(kind):
        return pc.cast(array, pa.string())
    if pa.types.is_decimal(kind) and kind.scale >= 0:
        return pc.cast(array, pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(array, "true", "false")
    if pa.types.is_timestamp(kind):
        return _timestamp_texts(array)
    return None


def column_texts(array: pa.Array) -> list[str | None]:
    """Each value of `array` as `cell_text`."""
    texts = _arrow_texts(array)
    if texts is not None:
        values: list[str | None] = texts.to_pylist()
        return values
    return [cell_text(v) for v in _python_values(array)]


def column_values(array: pa.Array) -> list[Any]:
    """Each value of `array` as JSON takes it."""
    kind = array.type
    if pa.types.is_timestamp(kind) or pa.types.is_decimal(kind) or pa.types.is_date(kind):
        texts = _arrow_texts(array)
        if texts is not None:
            values: list[Any] = texts.to_pylist()
            return values
    return [_json(v) for v in _python_values(array)]


# -- measuring for a terminal ---------------------------------------------------------


def _visible(text: str) -> str:
    """Control characters (line breaks apart) shown as escapes, never sent raw."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def _char_width(char: str) -> int:
    width = wcwidth.wcwidth(char)
    return width if width >= 0 else 1


def display_width(text: str) -> int:
    """Terminal cells `text` takes (wide characters two, combining marks none)."""
    width = wcwidth.wcswidth(text)
    if width >= 0:
        return int(width)
    return sum(_char_width(c) for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def _wrap(line: str, width: int) -> list[str]:
    """`line` cut into pieces of at most `width` cells (a wide character is never split)."""
    if display_width(line) <= width:
        return [line]
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for char in line:
        w = _char_width(char)
        if used + w > width and current:
            pieces.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += w
    pieces.append("".join(current))
    return pieces


def _cell_lines(text: str, width: int) -> list[tuple[str, str]]:
    """A cell's display lines with the mark that ends each: "" (the end), NEWLINE_MARK
    (the value goes on after a line break) or WRAP_MARK (it goes on, wrapped)."""
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        pieces = _wrap(_visible(line), width)
        for j, piece in enumerate(pieces):
            if j < len(pieces) - 1:
                out.append((piece, WRAP_MARK))
            elif i < len(lines) - 1:
                out.append((piece, NEWLINE_MARK))
            else:
                out.append((piece, ""))
    return out


# -- writers --------------------------------------------------------------------------


class TextSink(Protocol):
    """Where a writer's text goes: a file, standard output, a pager."""

    def write(self, text: str, /) -> int: ...


class ResultWriter(Protocol):
    """Writes a result batch by batch as it arrives; `close` ends it."""

    rows: int
    """Rows written so far."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


class TableWriter:
    """psql's aligned table. Column widths come from the first `block_rows` rows (held
    back until then); later rows keep those widths, wrapping what does not fit."""

    def __init__(
        self,
        out: TextSink,
        names: Sequence[str],
        *,
        max_width: int | None = DEFAULT_MAX_WIDTH,
        block_rows: int = 1000,
    ) -> None:
        self._out = out
        self._names = list(names)
        self._max_width = max_width
        self._block_rows = block_rows
        self._held: list[list[str | None]] = []
        self._widths: list[int] | None = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [column_texts(c) for c in batch.columns]
        rows = (
            [list(r) for r in zip(*columns, strict=True)]
            if columns
            else [[] for _ in range(batch.num_rows)]
        )
        if self._widths is None:
            self._held.extend(rows)
            if len(self._held) >= self._block_rows:
                self._start()
        else:
            self._lines(rows)

    def close(self) -> None:
        if self._widths is None:
            self._start()

    def _start(self) -> None:
        widths = []
        for i, name in enumerate(self._names):
            texts = [name, *(NULL_TEXT if r[i] is None else str(r[i]) for r in self._held)]
            longest = max(
                (display_width(_visible(line)) for text in texts for line in text.split("\n")),
                default=0,
            )
            if self._max_width is not None:
                longest = min(longest, max(self._max_width, display_width(name)))
            widths.append(max(longest, 1))
        self._widths = widths
        header = [_cell_lines(name, w) for name, w in zip(self._names, widths, strict=True)]
        self._emit(header)
        self._out.write("+".join("-" * (w + 2) for w in widths) + "\n")
        held, self._held = self._held, []
        self._lines(held)

    def _lines(self, rows: Iterable[list[str | None]]) -> None:
        assert self._widths is not None
        for row in rows:
            cells = [
                _cell_lines(NULL_TEXT if value is None else value, w)
                for value, w in zip(row, self._widths, strict=True)
            ]
            self._emit(cells)
            self.rows += 1

    def _emit(self, cells: list[list[tuple[str, str]]]) -> None:
        assert self._widths is not None
        height = max((len(c) for c in cells), default=1)
        for line in range(height):
            parts = []
            for cell, width in zip(cells, self._widths, strict=True):
                text, mark = cell[line] if line < len(cell) else ("", "")
                parts.append(" " + _pad(text, width) + (mark or " "))
            self._out.write("|".join(parts).rstrip() + "\n")


class VerticalWriter:
    """psql's expanded display (`\\x`): one `column | value` line per field."""

    def __init__(self, out: TextSink, names: Sequence[str]) -> None:
        self._out = out
        self._names = list(names)
        self._width = max((display_width(_visible(n)) for n in names), default=0)
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [column_texts(c) for c in batch.columns]
        for r in range(batch.num_rows):
            self.rows += 1
            self._out.write(f"-[ RECORD {self.rows} ]" + "-" * max(3, self._width - 8) + "\n")
            for name, column in zip(self._names, columns, strict=True):
                value = column[r]
                lines = (NULL_TEXT if value is None else value).split("\n")
                label = _pad(_visible(name), self._width)
                self._out.write(f"{label} | {_visible(lines[0])}".rstrip() + "\n")
                for more in lines[1:]:
                    self._out.write(f"{' ' * self._width} + {_visible(more)}".rstrip() + "\n")

    def close(self) -> None:
        if not self.rows:
            self._out.write("(no rows)\n")


def _csv_field(text: str | None) -> str:
    if text is None:
        return ""
    if text == "" or any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_column(array: pa.Array) -> list[str]:
    """A column's CSV fields; numbers, dates, times and booleans never need quotes."""
    kind = array.type
    texts = column_texts(array)
    plain = (
        pa.types.is_integer(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
        or pa.types.is_time(kind)
    )
    if plain:
        return ["" if t is None else t for t in texts]
    return [_csv_field(t) for t in texts]


class CsvWriter:
    """RFC 4180 with a header line and "\\n" line ends; NULL is an empty field, an empty
    string `""`."""

    def __init__(self, out: TextSink, names: Sequence[str]) -> None:
        self._out = out
        out.write(",".join(_csv_field(n) for n in names) + "\n")
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [_csv_column(c) for c in batch.columns]
        lines = [",".join(row) for row in zip(*columns, strict=True)]
        if lines:
            self._out.write("\n".join(lines) + "\n")
        self.rows += batch.num_rows

    def close(self) -> None:
        pass


class JsonWriter:
    """Rows as JSON objects, column name to value: one array (`array=True`, the `json`
    format) or one object per line (`jsonl`)."""

    def __init__(self, out: TextSink, names: Sequence[str], *, array: bool) -> None:
        self._out = out
        self._names = list(names)
        self._array = array
        self.rows = 0
        if array:
            out.write("[")

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [column_values(c) for c in batch.columns]
        for values in zip(*columns, strict=True):
            text = json.dumps(
                dict(zip(self._names, values, strict=True)), ensure_ascii=False, allow_nan=False
            )
            if self._array:
                self._out.write(("\n" if not self.rows else ",\n") + text)
            else:
                self._out.write(text + "\n")
            self.rows += 1

    def close(self) -> None:
        if self._array:
            self._out.write("\n]\n" if self.rows else "]\n")


def open_writer(
    fmt: str, out: TextSink, schema: pa.Schema, *, max_width: int | None = DEFAULT_MAX_WIDTH
) -> ResultWriter:
    """A writer of `fmt` (one of FORMATS) for results of `schema`."""
    names = schema.names
    makers: dict[str, Callable[[], ResultWriter]] = {
        "table": lambda: TableWriter(out, names, max_width=max_width),
        "vertical": lambda: VerticalWriter(out, names),
        "csv": lambda: CsvWriter(out, names),
        "json": lambda: JsonWriter(out, names, array=True),
        "jsonl": lambda: JsonWriter(out, names, array=False),
    }
    if fmt not in makers:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return makers[fmt]()


def format_table(table: pa.Table, max_width: int | None = DEFAULT_MAX_WIDTH) -> str:
    """A whole table as aligned text (the demo's output)."""
    sink = io.StringIO()
    writer = TableWriter(sink, table.column_names, max_width=max_width)
    for batch in table.to_batches():
        writer.write(batch)
    writer.close()
    return sink.getvalue().rstrip("\n")


def write_result(table: pa.Table, fmt: str, out: TextSink) -> None:
    """A whole table in `fmt`."""
    writer = open_writer(fmt, out, table.schema)
    for batch in table.to_batches():
        writer.write(batch)
    writer.close()
