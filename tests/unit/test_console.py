"""Result formats: one rendering of each value in every format, wide characters aligned,
long values wrapped and marked rather than cut, control characters escaped."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pyarrow as pa
import pytest

from fabric.console import (
    NEWLINE_MARK,
    WRAP_MARK,
    cell_text,
    display_width,
    format_table,
    open_writer,
    write_result,
)

UTC = dt.UTC


def _sample() -> pa.Table:
    return pa.table(
        {
            "ok": pa.array([True, False, None]),
            "at": pa.array(
                [
                    dt.datetime(2024, 1, 1, tzinfo=UTC),
                    dt.datetime(2024, 1, 1, 1, 2, 3, 4000, tzinfo=UTC),
                    None,
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": pa.array([Decimal("1.50"), Decimal("-2.00"), None], pa.decimal128(5, 2)),
            "name": pa.array(["", "x", None]),
        }
    )


def _write(table: pa.Table, fmt: str) -> str:
    sink = io.StringIO()
    write_result(table, fmt, sink)
    return sink.getvalue()


def test_booleans_timestamps_and_decimals_read_the_same_in_every_format() -> None:
    table = _sample()
    texts = {fmt: _write(table, fmt) for fmt in ("table", "vertical", "csv", "json", "jsonl")}
    for fmt, text in texts.items():
        for expected in (
            "true",
            "false",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T01:02:03.004000+00:00",
            "1.50",
            "-2.00",
        ):
            assert expected in text, (fmt, expected)
        assert "True" not in text and "2024-01-01 00:00:00" not in text
    assert texts["csv"].splitlines() == [
        "ok,at,amount,name",
        'true,2024-01-01T00:00:00+00:00,1.50,""',  # an empty string is quoted ...
        "false,2024-01-01T01:02:03.004000+00:00,-2.00,x",
        ",,,",  # ... NULL is empty
    ]
    rows = json.loads(texts["json"])
    assert rows[0] == {"ok": True, "at": "2024-01-01T00:00:00+00:00", "amount": "1.50", "name": ""}
    assert rows[2] == {"ok": None, "at": None, "amount": None, "name": None}
    assert [json.loads(line) for line in texts["jsonl"].splitlines()] == rows
    assert "NULL" in texts["table"] and "NULL" in texts["vertical"]
    assert _write(table.slice(0, 0), "json") == "[]\n"


def test_nanoseconds_and_special_floats_keep_every_digit() -> None:
    stamps = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns", tz="UTC"))
    table = pa.table({"t": stamps, "f": [float("nan")], "g": [float("-inf")]})
    assert "2023-11-14T22:13:20.123456789+00:00" in _write(table, "csv")
    row = json.loads(_write(table, "jsonl"))
    assert row == {"t": "2023-11-14T22:13:20.123456789+00:00", "f": "NaN", "g": "-Infinity"}
    assert cell_text(Decimal("1E+2")) == "100" and cell_text(b"\x00\xff") == "\\x00ff"


@pytest.mark.parametrize("wide", ["日本語テキスト", "emoji 🚀🚀", "Ünïcödé"])
def test_wide_characters_keep_the_columns_aligned(wide: str) -> None:
    table = pa.table({"id": [1, 2], "text": [wide, "ascii"], "n": [10, 20]})
    lines = format_table(table).splitlines()
    borders = {
        tuple(i for i, c in enumerate(_cells(line)) if c == "|") for line in lines if "|" in line
    }
    assert len(borders) == 1, lines  # every '|' at the same terminal column


def _cells(line: str) -> list[str]:
    """The line as terminal cells (a wide character takes two)."""
    cells: list[str] = []
    for char in line:
        cells.extend([char] * display_width(char))
    return cells


def test_long_values_wrap_and_are_marked_never_cut_silently() -> None:
    long = "a" * 95
    table = pa.table({"id": [1], "note": [long + "\nsecond line"], "tail": ["t"]})
    lines = format_table(table, max_width=40).splitlines()
    assert lines[2].split("|")[1].endswith(WRAP_MARK) and lines[2].endswith("| t")
    joined = "".join(
        line.split("|")[1].strip().rstrip(WRAP_MARK + NEWLINE_MARK).rstrip() for line in lines[2:]
    )
    assert joined == long + "second line"  # every character is there
    assert NEWLINE_MARK in lines[4]  # the line break is marked
    # columns: " id " 4, "|", " note…" 40 + 2, "|", " tail " 6: nothing wider
    assert max(display_width(line) for line in lines) == 4 + 1 + 42 + 1 + 6


def test_control_characters_are_shown_escaped_in_table_formats() -> None:
    table = pa.table({"v": ["a\tb\x1b[31mred"]})
    text = _write(table, "table") + _write(table, "vertical")
    assert "\x1b" not in text and "a\\tb\\x1b[31mred" in text
    assert "\x1b" in _write(table, "csv")  # machine formats keep the value as it is


def test_later_batches_keep_the_first_blocks_widths() -> None:
    sink = io.StringIO()
    schema = pa.schema([("v", pa.string())])
    writer = open_writer("table", sink, schema, max_width=None)
    writer.write(pa.record_batch([pa.array(["abc"] * 1000)], schema=schema))
    writer.write(pa.record_batch([pa.array(["abcdefgh"])], schema=schema))
    writer.close()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2 + 1000 + 3  # the wider late value wraps, marked
    assert lines[-3].endswith(WRAP_MARK) and lines[-1].strip() == "gh"
    assert writer.rows == 1001


def test_vertical_prints_one_field_per_line() -> None:
    table = pa.table({"id": [1], "a_long_name": ["x\ny"]})
    assert _write(table, "vertical").splitlines() == [
        "-[ RECORD 1 ]---",
        "id          | 1",
        "a_long_name | x",
        "            + y",
    ]
    assert _write(table.slice(0, 0), "vertical") == "(no rows)\n"


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_arrow_computed_texts_equal_the_one_rendering(unit: str, tz: str | None) -> None:
    """The common types are rendered by Arrow for speed; they must read exactly as
    `cell_text` renders each value (before 1970, fractions, nanoseconds included)."""
    import random

    from fabric.console import _python_values, column_texts, column_values

    scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    rng = random.Random(7)
    values = [
        rng.randint(-2_000_000_000, 4_000_000_000) * scale
        + (rng.choice([0, 0, 1, 999, 123_456, 5_000]) if unit != "s" else 0)
        for _ in range(2000)
    ]
    stamps = pa.array([*values, None, 0, -1], pa.timestamp(unit, tz))
    if unit == "ns":
        from fabric.console import _timestamps_ns

        expected = _timestamps_ns(stamps)
    else:
        expected = [cell_text(v) for v in _python_values(stamps)]
    assert column_texts(stamps) == expected
    assert column_values(stamps) == expected
    others = [
        pa.array([rng.randint(-(10**15), 10**15) for _ in range(500)] + [None], pa.int64()),
        pa.array([True, False, None]),
        pa.array(
            [Decimal(rng.randint(-(10**9), 10**9)) / 100 for _ in range(500)], pa.decimal128(12, 2)
        ),
        pa.array([dt.date(1, 1, 1), dt.date(2024, 2, 29), None]),
    ]
    for array in others:
        assert column_texts(array) == [cell_text(v) for v in _python_values(array)]
