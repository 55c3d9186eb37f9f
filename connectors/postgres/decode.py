"""PostgreSQL type -> Arrow type mapping, and the text -> Arrow decoder every path shares.

One mapping serves `introspect` (what the catalog shows) and `execute` (what the reader
returns), so a column never changes type between discovery and query.

PostgreSQL (by type OID; the type modifier gives precision and scale):

    int2 / int4 / int8                      int16 / int32 / int64
    oid                                     int64
    float4 / float8                         float32 / float64 (NaN and +-Infinity kept)
    numeric(p, s), p <= 38                  decimal128(p, s)
    numeric(p, s), 38 < p <= 76             decimal128(38, s) when the values fit (see
                                            below), else decimal256(p, s)
    numeric(p, s), p > 76                   utf8 (the exact text; Arrow has no wider decimal)
    numeric(p, s), s < 0                    as numeric(p - s, 0) (the values are integers)
    numeric (unconstrained: SUM, AVG, ...)  decimal128(38, s), s the largest scale among
                                            the values; decimal256(76, s) when they need
                                            more than 38 digits (see below)
    bool                                    bool
    text / varchar / char(n) / name / "char" utf8 (char(n) keeps the blank padding it has)
    json / jsonb / xml                      utf8 (the text form)
    uuid                                    utf8 (canonical 36-character form)
    bytea                                   binary
    date                                    date32
    time                                    time64[us]
    timetz                                  utf8 (`HH:MM:SS+HH`; Arrow has no time-with-zone)
    timestamp                               timestamp[us]
    timestamptz                             timestamp[us, tz=UTC] (the session runs in UTC)
    interval                                month_day_nano_interval (months, days and
                                            microseconds kept apart, exactly as PostgreSQL
                                            stores them; a `duration` would have to guess
                                            how long a month is)
    arrays, ranges, enums, inet, money,     utf8 (PostgreSQL's text form of the value)
    any other type

Numeric sized by its values: PostgreSQL's unconstrained numeric allows 131072 digits
before the point and 16383 after, so no Arrow type holds every value, and decimal256 is
not read by much of the Arrow world (polars, DuckDB and pandas refuse it or fall back to
objects). So an unconstrained numeric (every SUM and AVG over numeric) and a numeric(p, s)
with p > 38 get their type from the first batch of the result: decimal128(38, s), with s
the largest number of fractional digits PostgreSQL printed (its display scale, so a SUM of
numeric(10, 2) keeps its two places) or the declared scale, when every value has at most
38 - s integer digits; otherwise decimal256 (76 or the declared precision). A later value
that does not fit the type chosen (more integer or non-zero fractional digits than the
first rows had), NaN or +-Infinity is never rounded or clipped: the read fails with
SourceQueryError naming the column, and the message tells the user to cast or round in
the query (`CAST(x AS numeric(38, 10))` fixes the type in advance). The catalog, which
has no values, shows such a column as the widest type it may take (decimal256(76, 38), or
decimal256(p, s)).

Other values Arrow cannot hold (dates/timestamps `infinity` or BC, time 24:00:00) fail the
same way, never silently. Error messages name the column and the type; they never carry
the value (Arrow's own conversion messages do, so they are never passed on).

Decoding is text -> Arrow with explicit column types. Only a handful of rows (a point
query) goes through a Python value per field: up to `SMALL_ROWS` rows, each text value
is parsed with Python's own exact parsers (`int`, `float`, `Decimal`, `date`/`datetime`/
`time.fromisoformat`) and the batch is built in one pyarrow call, which costs a fraction
of one Arrow cast per column; pyarrow refuses any value that does not fit its type
exactly (a decimal with too many digits, an integer out of range), and any value either
side refuses sends the batch down the vectorized route below, so values and errors are
the same either way. Otherwise the COPY path feeds pyarrow's C++ CSV reader `COPY ... (FORMAT csv)`
blocks; the parameterized path gets rows of text values (psycopg's C text loader) and
turns each column into an Arrow string array, then into its type with Arrow's cast, which
parses with the same C++ value parsers as the CSV reader (`bool` is matched against
`t`/`f` exactly as the CSV reader's true/false values are). A column type the cast
cannot parse (time) sends the batch through the CSV reader instead (re-encoded with
`pyarrow.csv.write_csv`: strings quoted, NULL unquoted-empty). Both routes give identical
types, values and errors (tests/integration/test_postgres_connector.py checks it). Only
bytea and interval columns go through one Python object per value (hex decode, interval
fields).
"""

from __future__ import annotations

import datetime
import decimal
import functools
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from connectors.batches import unrepresentable
from fabric.errors import SourceQueryError

# PostgreSQL built-in type OIDs (pg_type.dat).
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 114, 142, 700, 701, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802

UNCONSTRAINED_NUMERIC = pa.decimal256(76, 38)
"""Arrow type of a numeric without precision (see the module docstring)."""

_VARHDRSZ = 4

_SIMPLE: dict[int, pa.DataType] = {
    BOOL: pa.bool_(),
    BYTEA: pa.binary(),
    INT8: pa.int64(),
    INT2: pa.int16(),
    INT4: pa.int32(),
    OID: pa.int64(),
    FLOAT4: pa.float32(),
    FLOAT8: pa.float64(),
    DATE: pa.date32(),
    TIME: pa.time64("us"),
    TIMESTAMP: pa.timestamp("us"),
    TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
    INTERVAL: pa.month_day_nano_interval(),
}


def numeric_arrow_type(typmod: int) -> pa.DataType:
    """Arrow type of `numeric` with the given type modifier (-1: unconstrained)."""
    if typmod < _VARHDRSZ:
        return UNCONSTRAINED_NUMERIC
    packed = typmod - _VARHDRSZ
    precision = (packed >> 16) & 0xFFFF
    scale = ((packed & 0x7FF) ^ 1024) - 1024  # 11-bit signed since PostgreSQL 15
    if scale < 0:
        precision, scale = precision - scale, 0
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return pa.string()


def pg_arrow_type(type_oid: int, typmod: int = -1) -> pa.DataType:
    """Arrow type of a PostgreSQL type; every type maps (unknown ones to utf8 text)."""
    if type_oid == NUMERIC:
        return numeric_arrow_type(typmod)
    return _SIMPLE.get(type_oid, pa.string())


@dataclass(frozen=True, slots=True)
class PgColumn:
    """One result column as the statement description gives it."""

    name: str
    type_oid: int
    typmod: int = -1


_CSV_COLUMN = re.compile(r"CSV column #(\d+)")
_FRACTION_ZEROS = r"(\.\d*?)0+$"
_INTERVAL = (
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<w>-?\d+)W)?(?:(?P<d>-?\d+)D)?"
    r"(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?)(?P<si>\d+)(?:\.(?P<sf>\d+))?S)?)?$"
)


def _decode_bytea(array: pa.Array) -> pa.Array:
    values = array.to_pylist()
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
        elif value.startswith("\\x"):
            out.append(bytes.fromhex(value[2:]))
        else:
            raise ValueError("bytea not in hex format")
    return pa.array(out, pa.binary())


def _decode_interval(array: pa.Array) -> pa.Array:
    """ISO 8601 intervals (IntervalStyle iso_8601) -> month_day_nano_interval."""
    if array.null_count == len(array):
        return pa.nulls(len(array), pa.month_day_nano_interval())
    parts = pc.extract_regex(array, _INTERVAL)  # raises on a non-matching value

    def field(name: str) -> list[int]:
        col = pc.fill_null(parts.field(name), "0")
        col = pc.if_else(pc.equal(col, ""), "0", col)
        return col.cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]

    years, months, weeks, days = field("y"), field("mo"), field("w"), field("d")
    hours, minutes, seconds = field("h"), field("mi"), field("si")
    signs = pc.fill_null(parts.field("s"), "").to_pylist()
    fractions = pc.fill_null(parts.field("sf"), "").to_pylist()
    valid = array.is_valid().to_pylist()
    out: list[tuple[int, int, int] | None] = []
    for i, ok in enumerate(valid):
        if not ok:
            out.append(None)
            continue
        frac = fractions[i]
        nanos = seconds[i] * 1_000_000_000 + (int(frac.ljust(9, "0")[:9]) if frac else 0)
        if signs[i] == "-":
            nanos = -nanos
        nanos += (hours[i] * 3600 + minutes[i] * 60) * 1_000_000_000
        out.append((years[i] * 12 + months[i], weeks[i] * 7 + days[i], nanos))
    return pa.array(out, pa.month_day_nano_interval())


def _text_decimal_extent(texts: pa.Array) -> tuple[int, int] | None:
    """(most integer digits, most fractional digits) among PostgreSQL's text forms of
    numeric values; None when all are NULL."""
    # sign and leading zeros are no digits (`0.5` needs no integer digit)
    values = pc.replace_substring_regex(texts.drop_null(), r"^[-+]?0*", "")
    if len(texts) == texts.null_count:
        return None
    length = pc.utf8_length(values)
    point = pc.find_substring(values, ".")
    has_point = pc.greater_equal(point, 0)
    integer = pc.if_else(has_point, point, length)
    fraction = pc.if_else(has_point, pc.subtract(pc.subtract(length, point), 1), 0)
    return int(pc.max(integer).as_py()), int(pc.max(fraction).as_py())


def _sized_decimal(
    declared: pa.Decimal256Type | None, extent: tuple[int, int] | None
) -> pa.DataType:
    """decimal128(38, s) when the values' digits fit it, else decimal256 (see the module
    docstring). `declared`: decimal256(p, s) of a numeric(p, s), None for an unconstrained
    numeric, whose scale then comes from the values."""
    integer, fraction = extent if extent is not None else (0, 0)
    scale = min(fraction, 76) if declared is None else declared.scale
    if scale <= 38 and integer <= 38 - scale:
        return pa.decimal128(38, scale)
    return pa.decimal256(76, scale) if declared is None else declared


@functools.lru_cache(maxsize=256)
def _decimal_from_text(arrow_type: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    """A checked string -> decimal cast: Arrow's cast does not reject extra fractional
    digits reliably, so the digits are checked first and nothing is ever rounded."""
    integer_digits = arrow_type.precision - arrow_type.scale
    pattern = rf"^[-+]?0*\d{{0,{integer_digits}}}(\.\d{{0,{arrow_type.scale}}})?$"

    def convert(array: pa.Array) -> pa.Array:
        trimmed = pc.replace_substring_regex(array, _FRACTION_ZEROS, r"\1")
        ok = pc.match_substring_regex(trimmed, pattern)
        if not pc.all(pc.fill_null(ok, True)).as_py():
            raise ValueError("decimal out of range")
        return trimmed.cast(arrow_type)

    return convert


def _identity(array: pa.Array) -> pa.Array:
    return array


def _bool_from_text(array: pa.Array) -> pa.Array:
    """`t`/`f` -> bool, anything else an error (the CSV reader's true/false values)."""
    true = pc.equal(array, "t")
    known = pc.or_(true, pc.equal(array, "f"))
    if not pc.all(pc.fill_null(known, True)).as_py():
        raise ValueError("not a PostgreSQL boolean")
    return true


def _cast_to(arrow_type: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    def convert(array: pa.Array) -> pa.Array:
        return array.cast(arrow_type)  # safe cast: a value that does not parse raises

    return convert


def _fast_converter(arrow_type: pa.DataType) -> Callable[[pa.Array], pa.Array] | None:
    """string -> `arrow_type` by Arrow's cast, for the types whose cast parses text with
    the CSV reader's own parsers; None for a type that must take the CSV route."""
    if pa.types.is_string(arrow_type):
        return _identity
    if pa.types.is_boolean(arrow_type):
        return _bool_from_text
    if (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_date32(arrow_type)
        or pa.types.is_timestamp(arrow_type)
        or pa.types.is_decimal128(arrow_type)
    ):
        return _cast_to(arrow_type)
    return None


SMALL_ROWS = 32
"""Up to this many rows, parsing in Python beats Arrow's per-column cast (whose fixed cost
dominates a point query); above it the vectorized route is faster."""

_NOT_PARSED = ValueError, TypeError, ArithmeticError, pa.ArrowException


def _strict(pattern: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, for text in PostgreSQL's canonical output form only. Python's parsers also
    take forms Arrow refuses (`1_000`, ` 5`, `1e5` for a decimal); refusing them here
    keeps the two routes equal for any input, not only for what a server sends."""
    match = re.compile(pattern).fullmatch

    def parse_canonical(text: str) -> Any:
        if match(text) is None:
            raise ValueError("not in canonical form")
        return parse(text)

    return parse_canonical


def _pg_bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise ValueError("not a PostgreSQL boolean")


_DIGITS = r"-?[0-9]+"
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME = r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
_PARSE_INT = _strict(_DIGITS, int)
_PARSE_FLOAT = _strict(r"-?[0-9]+(?:\.[0-9]+)?(?:e[-+][0-9]+)?|NaN|-?Infinity", float)
_PARSE_DECIMAL = _strict(r"-?[0-9]+(?:\.[0-9]+)?", decimal.Decimal)
_PARSE_DATE = _strict(_DATE, datetime.date.fromisoformat)
_PARSE_TIMESTAMP = _strict(f"{_DATE} {_TIME}", datetime.datetime.fromisoformat)
_PARSE_TIMESTAMPTZ = _strict(
    f"{_DATE} {_TIME}[-+][0-9]{{2}}(?::[0-9]{{2}})?", datetime.datetime.fromisoformat
)
_PARSE_TIME = _strict(_TIME, datetime.time.fromisoformat)


def _python_parser(arrow_type: pa.DataType) -> Callable[[str], Any] | None:
    """The exact text -> Python value parser for one target type (`str` for text);
    None when the type has none (the batch then takes the vectorized route)."""
    if pa.types.is_string(arrow_type):
        return str
    if pa.types.is_integer(arrow_type):
        return _PARSE_INT
    if pa.types.is_float64(arrow_type):
        # float32 is left out: text -> double -> float could round twice
        return _PARSE_FLOAT
    if pa.types.is_boolean(arrow_type):
        return _pg_bool
    if pa.types.is_decimal(arrow_type):
        return _PARSE_DECIMAL
    if pa.types.is_date32(arrow_type):
        return _PARSE_DATE
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "us":
        return _PARSE_TIMESTAMPTZ if arrow_type.tz is not None else _PARSE_TIMESTAMP
    if pa.types.is_time64(arrow_type) and arrow_type.unit == "us":
        return _PARSE_TIME
    return None


class TextDecoder:
    """Turns PostgreSQL's text form of a result (CSV blocks, or text rows) into record
    batches of the schema `pg_arrow_type` gives, without a Python object per row."""

    def __init__(self, columns: Sequence[PgColumn]) -> None:
        self.columns = tuple(columns)
        declared = [pg_arrow_type(c.type_oid, c.typmod) for c in self.columns]
        self.sized: dict[int, pa.Decimal256Type | None] = {
            i: None if c.typmod < _VARHDRSZ else declared[i]
            for i, c in enumerate(self.columns)
            if pa.types.is_decimal256(declared[i])
        }
        """Numeric columns whose type the values decide (`sized_schema`): their declared
        type, None when unconstrained. This decoder's batches carry them as text."""
        self.schema = pa.schema(
            [
                pa.field(c.name, pa.string() if i in self.sized else declared[i])
                for i, c in enumerate(self.columns)
            ]
        )
        self._csv_names = [f"c{i}" for i in range(len(self.columns))]
        read_types: dict[str, pa.DataType] = {}
        self._post: list[Callable[[pa.Array], pa.Array] | None] = []
        has_text = False
        for csv_name, column, field in zip(self._csv_names, self.columns, self.schema, strict=True):
            target = field.type
            post: Callable[[pa.Array], pa.Array] | None = None
            read = target
            if column.type_oid == BYTEA:
                read, post = pa.string(), _decode_bytea
            elif column.type_oid == INTERVAL:
                read, post = pa.string(), _decode_interval
            if pa.types.is_string(read):
                has_text = True
            read_types[csv_name] = read
            self._post.append(post)
        self._fast: list[Callable[[pa.Array], pa.Array] | None] | None = []
        for field, post in zip(self.schema, self._post, strict=True):
            fast = post if post is not None else _fast_converter(field.type)
            if fast is None:
                self._fast = None  # a type the cast cannot parse: the CSV route
                break
            self._fast.append(None if fast is _identity else fast)
        self._text_struct = pa.struct([pa.field(n, pa.string()) for n in self._csv_names])
        # The Python route for a few rows: a parser per column (None: keep the text), or
        # no route at all when some column type has no exact parser.
        self._row_struct = pa.struct(list(self.schema))
        parsers = [_python_parser(field.type) for field in self.schema]
        self._parsers: tuple[Callable[[str], Any] | None, ...] | None = (
            tuple(None if p is str else p for p in parsers)
            if all(p is not None for p in parsers)
            and all(c.type_oid not in (BYTEA, INTERVAL) for c in self.columns)
            else None
        )
        # one NULL column gives an empty line: empty lines are rows, never skipped
        self.parse_options = pacsv.ParseOptions(
            newlines_in_values=has_text, ignore_empty_lines=False
        )
        self.convert_options = pacsv.ConvertOptions(
            column_types=read_types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        )

    def sized_schema(self, sample: pa.RecordBatch | None) -> pa.Schema:
        """The result's schema, the types of the `sized` columns chosen from the values of
        `sample` (the first batch this decoder gave; None: the result has no rows)."""
        schema = self.schema
        for i, declared in self.sized.items():
            extent = _text_decimal_extent(sample.column(i)) if sample is not None else None
            sized = _sized_decimal(declared, extent)
            schema = schema.set(i, pa.field(self.columns[i].name, sized))
        return schema

    def to_sized(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        """A batch of this decoder in `schema` (from `sized_schema`); a value that does
        not fit its column's chosen type fails the read, never rounded."""
        arrays = list(batch.columns)
        for i in self.sized:
            target = schema.field(i).type
            try:
                arrays[i] = _decimal_from_text(target)(arrays[i])
            except (pa.ArrowException, ValueError):
                raise unrepresentable(i, self.columns[i].name, target) from None
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def sized_stream(
        self, batches: Iterator[pa.RecordBatch], sample: pa.RecordBatch | None = None
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The result's schema and its batches in it. Without a `sample` (the rows the
        stream starts with, already read), the first batch is read here when some
        column's type depends on the values: a blocking call, made where reading is."""
        if not self.sized:
            return self.schema, batches
        first: pa.RecordBatch | None = None
        if sample is None:
            first = next(batches, None)
            sample = first
        schema = self.sized_schema(sample)

        def convert() -> Iterator[pa.RecordBatch]:
            if first is not None:
                yield self.to_sized(first, schema)
            for batch in batches:
                yield self.to_sized(batch, schema)

        return schema, convert()

    def read_options(self, block_size: int = 1 << 21) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(column_names=self._csv_names, block_size=block_size)

    def open_stream(self, source: Any, block_size: int = 1 << 21) -> pacsv.CSVStreamingReader:
        """A streaming CSV reader over a file-like object (COPY ... FORMAT csv)."""
        return pacsv.open_csv(
            source,
            read_options=self.read_options(block_size),
            parse_options=self.parse_options,
            convert_options=self.convert_options,
        )

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Apply the post-parse conversions and the real column names."""
        arrays = list(batch.columns)
        for i, post in enumerate(self._post):
            if post is not None:
                try:
                    arrays[i] = post(arrays[i])
                except (pa.ArrowException, ValueError):
                    raise self.unrepresentable(i) from None
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def from_text_rows(self, rows: Sequence[Sequence[str | None]]) -> pa.RecordBatch:
        """Rows of PostgreSQL text values (psycopg text loaders) -> one record batch."""
        if self.columns and len(rows) <= SMALL_ROWS:
            batch = self.from_text_rows_python(rows)
            if batch is not None:
                return batch
        return self.from_text_rows_arrow(rows)

    def from_text_rows_python(self, rows: Sequence[Sequence[str | None]]) -> pa.RecordBatch | None:
        """`from_text_rows` by parsing each value in Python (for a few rows); None when a
        column type has no exact parser or a value does not parse or fit (the vectorized
        routes then give the value or the error)."""
        parsers = self._parsers
        if parsers is None or not rows:
            return None
        try:
            values = [
                tuple(
                    v if p is None or v is None else p(v) for p, v in zip(parsers, row, strict=True)
                )
                for row in rows
            ]
            return pa.RecordBatch.from_struct_array(pa.array(values, self._row_struct))
        except _NOT_PARSED:
            return None

    def from_text_rows_csv(self, rows: Sequence[Sequence[str | None]]) -> pa.RecordBatch:
        """`from_text_rows` through the CSV reader (the route for every column type)."""
        if not self.columns:
            return pa.RecordBatch.from_pylist([{}] * len(rows), schema=self.schema)
        if not rows:
            return self.empty()
        columns = [pa.array(col, pa.string()) for col in zip(*rows, strict=True)]
        table = pa.Table.from_arrays(columns, names=self._csv_names)
        sink = io.BytesIO()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
        parsed = self.parse_csv_errors(
            lambda: pacsv.read_csv(
                pa.BufferReader(sink.getvalue()),
                read_options=self.read_options(),
                parse_options=self.parse_options,
                convert_options=self.convert_options,
            )
        )
        batch = parsed.combine_chunks().to_batches()[0]
        return self.finish(batch)

    def from_text_rows_arrow(self, rows: Sequence[Sequence[str | None]]) -> pa.RecordBatch:
        """`from_text_rows` without the Python route (Arrow casts, or the CSV reader)."""
        if not self.columns:
            return pa.RecordBatch.from_pylist([{}] * len(rows), schema=self.schema)
        if not rows:
            return self.empty()
        if self._fast is not None:
            return self._from_text_rows_fast(rows, self._fast)
        return self.from_text_rows_csv(rows)

    def _from_text_rows_fast(
        self,
        rows: Sequence[Sequence[str | None]],
        converters: list[Callable[[pa.Array], pa.Array] | None],
    ) -> pa.RecordBatch:
        try:
            texts = pa.array(rows, self._text_struct).flatten()
        except (pa.ArrowException, TypeError, ValueError):
            raise SourceQueryError(
                "the result could not be converted to its Arrow schema (the result's shape "
                "changed); run the query again"
            ) from None
        arrays = []
        for i, (text, convert) in enumerate(zip(texts, converters, strict=True)):
            if convert is None:
                arrays.append(text)
                continue
            try:
                arrays.append(convert(text))
            except (pa.ArrowException, ValueError):
                raise self.unrepresentable(i) from None
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self.schema)

    def unrepresentable(self, column: int) -> SourceQueryError:
        return unrepresentable(column, self.columns[column].name, self.schema.field(column).type)

    def error_from_arrow(self, exc: BaseException) -> SourceQueryError:
        """A value-free error for an Arrow conversion failure (Arrow's text has values)."""
        match = _CSV_COLUMN.search(str(exc))
        if match and int(match.group(1)) < len(self.columns):
            return self.unrepresentable(int(match.group(1)))
        return SourceQueryError(
            "the result could not be converted to its Arrow schema (a value does not fit "
            "its column type, or the result's shape changed); cast the column in the query"
        )

    def parse_csv_errors(self, fn: Callable[[], pa.Table]) -> pa.Table:
        try:
            return fn()
        except pa.ArrowException as exc:
            raise self.error_from_arrow(exc) from None
