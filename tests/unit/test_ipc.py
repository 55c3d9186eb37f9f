"""Arrow IPC framing: round trips, message-size limits, incremental client reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pytest

from fabric.results.ipc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    END_OF_STREAM,
    IpcChunker,
    IpcStreamReader,
    decode_page,
    encode_page,
    open_ipc_stream,
    wire_schema,
)


def _typed_batch() -> pa.RecordBatch:
    tz = "Europe/Paris"
    return pa.record_batch(
        {
            "i8": pa.array([1, None, -128], pa.int8()),
            "i64": pa.array([2**62, None, -(2**63)], pa.int64()),
            "u64": pa.array([2**64 - 1, 0, None], pa.uint64()),
            "f64": pa.array([1.5, float("inf"), None], pa.float64()),
            "dec": pa.array(
                [Decimal("12345678901234567890.123456"), None, Decimal("-0.000001")],
                pa.decimal128(38, 6),
            ),
            "ts_tz": pa.array(
                [dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC), None, dt.datetime(1969, 1, 1)],
                pa.timestamp("us", tz=tz),
            ),
            "ts": pa.array([dt.datetime(2000, 1, 1), None, None], pa.timestamp("ns")),
            "d": pa.array([dt.date(1, 1, 1), dt.date(9999, 12, 31), None], pa.date32()),
            "s": pa.array(["héllo wörld", "日本語 🎉", None], pa.string()),
            "ls": pa.array(["", None, "x" * 1000], pa.large_string()),
            "bin": pa.array([b"\x00\xff", None, b""], pa.binary()),
            "b": pa.array([True, False, None], pa.bool_()),
            "n": pa.nulls(3),
            "lst": pa.array([[1, 2], None, []], pa.list_(pa.int32())),
            "st": pa.array([{"a": 1}, None, {"a": None}], pa.struct([("a", pa.int64())])),
        }
    )


def _stream(chunker: IpcChunker, batches: list[pa.RecordBatch]) -> list[bytes]:
    return list(chunker.messages(batches))


def test_round_trip_of_types_through_chunks() -> None:
    batch = _typed_batch()
    chunker = IpcChunker(batch.schema)
    messages = _stream(chunker, [batch])
    assert messages[-1] == END_OF_STREAM
    table = pa_ipc.open_stream(b"".join(messages)).read_all()
    assert table.schema.equals(batch.schema)
    assert table.equals(pa.Table.from_batches([batch]))
    assert table.column("ts_tz").type.tz == "Europe/Paris"
    assert table.column("s").to_pylist()[1] == "日本語 🎉"


def test_round_trip_through_page() -> None:
    batch = _typed_batch()
    table = decode_page(encode_page(batch.schema, [batch, batch.slice(1)]))
    assert table.equals(pa.Table.from_batches([batch, batch.slice(1)]))


def test_empty_result_is_schema_only() -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    chunker = IpcChunker(schema)
    empty = pa.record_batch({"a": pa.array([], pa.int64()), "b": pa.array([], pa.string())})
    messages = _stream(chunker, [empty])
    assert len(messages) == 2  # schema + end of stream; zero-row batches send nothing
    table = pa_ipc.open_stream(b"".join(messages)).read_all()
    assert table.schema.equals(schema)
    assert table.num_rows == 0
    page = decode_page(encode_page(schema, []))
    assert page.schema.equals(schema)
    assert page.num_rows == 0


def test_schema_message_and_eos_are_the_stream_frame() -> None:
    schema = pa.schema([("a", pa.int32())])
    chunker = IpcChunker(schema)
    assert chunker.schema_message() == schema.serialize().to_pybytes()
    assert chunker.end_of_stream() == END_OF_STREAM
    assert chunker.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES


def test_mismatched_batch_schema_is_refused() -> None:
    chunker = IpcChunker(pa.schema([("a", pa.int32())]))
    with pytest.raises(ValueError, match="schema"):
        list(chunker.batch_messages(pa.record_batch({"a": pa.array([1], pa.int64())})))


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        IpcChunker(pa.schema([]), max_message_bytes=0)


def test_every_message_within_limit_for_a_50_mb_batch() -> None:
    n = 2_000_000
    ints = pa.array(range(n), pa.int64())  # 16 MB
    # Strings of uneven width: most short, every 1000th row 2 KB, so a proportional
    # estimate overshoots on some slices and the re-slicing path is exercised.
    pattern = pa.array(["x" * 10] * 999 + ["y" * 2048])
    strings = pa.concat_arrays([pattern] * (n // 1000))
    batch = pa.record_batch({"i": ints, "f": ints.cast(pa.float64()), "s": strings})
    assert batch.nbytes > 50_000_000
    limit = 4 << 20
    chunker = IpcChunker(batch.schema, limit)
    body = list(chunker.batch_messages(batch))
    assert len(body) > 10
    assert all(len(m) <= limit for m in body)
    table = open_ipc_stream(iter([chunker.schema_message(), *body, END_OF_STREAM])).read_all()
    assert table.num_rows == n
    assert table.equals(pa.Table.from_batches([batch]))


def test_reslicing_when_rows_are_skewed() -> None:
    # 1000 tiny rows then 10 rows of 100 KB: the average says "all rows fit", the tail
    # does not.
    values = ["a"] * 1000 + ["z" * 100_000] * 10
    batch = pa.record_batch({"s": pa.array(values)})
    limit = 250_000
    chunker = IpcChunker(batch.schema, limit)
    body = list(chunker.batch_messages(batch))
    assert all(len(m) <= limit for m in body)
    table = pa_ipc.open_stream(b"".join([chunker.schema_message(), *body, END_OF_STREAM]))
    assert table.read_all().column("s").to_pylist() == values


def test_a_row_larger_than_the_limit_is_sent_alone() -> None:
    values = ["small", "B" * 10_000, "small2"]
    batch = pa.record_batch({"s": pa.array(values)})
    limit = 2_000
    chunker = IpcChunker(batch.schema, limit)
    body = list(chunker.batch_messages(batch))
    assert len(body) == 3
    oversized = [m for m in body if len(m) > limit]
    assert len(oversized) == 1
    decoded = [pa_ipc.read_record_batch(m, batch.schema).num_rows for m in body]
    assert decoded == [1, 1, 1]
    table = pa_ipc.open_stream(b"".join([chunker.schema_message(), *body, END_OF_STREAM]))
    assert table.read_all().column("s").to_pylist() == values


def test_dictionaries_are_decoded_on_the_wire() -> None:
    dict_list = pa.list_(pa.dictionary(pa.int8(), pa.string()))
    batch1 = pa.record_batch(
        {
            "d": pa.array(["a", "b", None, "a"]).dictionary_encode(),
            "ld": pa.array([["x"], None, ["y", "x"], []], dict_list),
        }
    )
    # Same schema, a different dictionary: what a naive stream would have to replace.
    batch2 = pa.record_batch(
        {
            "d": pa.array(["c", "c", "c", "c"]).dictionary_encode(),
            "ld": pa.array([["z"], ["z"], None, None], dict_list),
        }
    )
    expected = pa.schema([("d", pa.string()), ("ld", pa.list_(pa.string()))])
    assert wire_schema(batch1.schema).equals(expected)
    chunker = IpcChunker(batch1.schema, max_message_bytes=64)  # forces one row per message
    assert chunker.schema.equals(expected)
    table = open_ipc_stream(iter(_stream(chunker, [batch1, batch2]))).read_all()
    assert table.schema.equals(expected)
    assert table.column("d").to_pylist() == ["a", "b", None, "a", "c", "c", "c", "c"]
    assert table.column("ld").to_pylist()[:3] == [["x"], None, ["y", "x"]]
    page = decode_page(encode_page(batch1.schema, [batch1, batch2]))
    assert page.equals(table)


def test_wire_schema_without_dictionaries_is_unchanged() -> None:
    schema = pa.schema([("a", pa.int32())], metadata={b"k": b"v"})
    assert wire_schema(schema) is schema


def test_chunks_are_read_one_by_one_as_they_arrive() -> None:
    batches = [pa.record_batch({"i": pa.array(range(k * 100, k * 100 + 100))}) for k in range(5)]
    chunker = IpcChunker(batches[0].schema)
    messages = _stream(chunker, batches)
    pulled: list[int] = []

    def arriving() -> Iterator[bytes]:
        for index, message in enumerate(messages):
            pulled.append(index)
            yield message

    reader = open_ipc_stream(arriving())
    assert reader.schema.equals(batches[0].schema)
    assert pulled == [0]  # only the schema so far
    first = reader.read_next_batch()
    assert first.equals(batches[0])
    assert pulled == [0, 1]  # one more chunk, not the whole stream
    rest = list(reader)
    assert [b.num_rows for b in rest] == [100] * 4
    assert pulled == list(range(len(messages)))


def test_chunks_not_aligned_with_messages() -> None:
    batch = _typed_batch()
    stream = b"".join(_stream(IpcChunker(batch.schema), [batch, batch]))
    # Odd-sized pieces, including empty ones, across every message boundary.
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    pieces.insert(3, b"")
    table = open_ipc_stream(iter(pieces)).read_all()
    assert table.equals(pa.Table.from_batches([batch, batch]))


def test_stream_reader_is_a_file() -> None:
    chunks: list[bytes | memoryview | bytearray] = [b"abc", memoryview(b"de"), bytearray(b"fgh")]
    reader = IpcStreamReader(iter(chunks))
    assert reader.readable()
    buf = bytearray(2)
    assert reader.readinto(buf) == 2 and buf == b"ab"
    assert reader.read(4) == b"cdef"  # full read across chunks
    assert reader.tell() == 6
    assert reader.read() == b"gh"
    assert reader.read(5) == b""
    assert reader.readinto(bytearray(3)) == 0
    reader.close()
    assert reader.closed


def test_stream_error_propagates() -> None:
    class Broken(Exception):
        pass

    batch = pa.record_batch({"i": pa.array(range(10))})
    messages = _stream(IpcChunker(batch.schema), [batch, batch])

    def failing() -> Iterator[bytes]:
        yield messages[0]
        yield messages[1]
        raise Broken("stream reset")

    reader = open_ipc_stream(failing())
    assert reader.read_next_batch().num_rows == 10
    with pytest.raises(Broken):
        reader.read_next_batch()


def test_truncated_stream_is_an_error_not_a_short_result() -> None:
    batch = pa.record_batch({"i": pa.array(range(1000))})
    messages = _stream(IpcChunker(batch.schema), [batch, batch])
    body = messages[1]
    # Cut inside a message.
    reader = open_ipc_stream(iter([messages[0], body[: len(body) // 2]]))
    with pytest.raises(EOFError, match="incomplete"):
        reader.read_all()
    # Cut exactly between two messages, before the end-of-stream marker: pyarrow alone
    # would take this as a complete stream of one batch.
    reader = open_ipc_stream(iter(messages[:2]))
    assert reader.read_next_batch().num_rows == 1000
    with pytest.raises(EOFError, match="incomplete"):
        reader.read_next_batch()
    # Schema only, no end-of-stream marker.
    with pytest.raises(EOFError):
        open_ipc_stream(iter(messages[:1])).read_all()
    # Nothing at all.
    with pytest.raises(EOFError):
        open_ipc_stream(iter([]))


def test_shared_chunkers_are_kept_per_schema_object_and_limit() -> None:
    schema = pa.schema([("a", pa.int32()), ("b", pa.string())])
    chunker = IpcChunker.shared(schema, 1024)
    assert IpcChunker.shared(schema, 1024) is chunker
    assert IpcChunker.shared(schema, 2048) is not chunker
    # an equal schema that is another object gets its own chunker (identity, not hashing)
    twin = pa.schema([("a", pa.int32()), ("b", pa.string())])
    assert IpcChunker.shared(twin, 1024) is not chunker
    # the schema message is encoded once and is the stream's first message
    assert chunker.schema_message() is chunker.schema_message()
    assert chunker.schema_message() == schema.serialize().to_pybytes()


def test_small_batches_skip_the_sizing_pass_with_the_same_bytes() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"a": pa.array([1, None, 3], pa.int64()), "s": pa.array(["x", "yy", None])}
    )
    chunker = IpcChunker(batch.schema, max_message_bytes=1 << 20)
    assert list(chunker.batch_messages(batch)) == [batch.serialize().to_pybytes()]
    # near the limit the exact size decides, and the batch is cut
    tight = IpcChunker(batch.schema, max_message_bytes=260)
    pieces = list(tight.batch_messages(batch))
    assert len(pieces) > 1 and all(len(p) <= 260 for p in pieces)
