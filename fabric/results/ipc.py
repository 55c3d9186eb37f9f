"""Arrow IPC framing for gRPC: a result travels as one Arrow IPC *stream* cut into messages.

Wire format. A result is the byte sequence of an Arrow IPC stream: one schema message,
record-batch messages, then the end-of-stream marker. The concatenation of the gRPC
payloads, in order, is a stream that ``pa.ipc.open_stream`` reads as is. A gateway that
runs the query sends whole encapsulated IPC messages in each gRPC message; a platform
that forwards a replica's result passes its bytes on as they came, cut anywhere (the
reader joins a message that spans two payloads). No message is larger than
``max_message_bytes`` unless a single row is larger than that on its own (see
``IpcChunker.batch_messages``).

Dictionaries. Dictionary-encoded columns (anywhere in the type tree) are *decoded* to their
value type before they are serialized, and the wire schema says so. Sending dictionaries
would mean dictionary-batch messages that can be larger than the message limit on their own,
replacement/delta bookkeeping across slices, and a cache entry that depends on the writer's
memo state; decoding keeps every message self-contained and every slice independent. Sources
rarely produce dictionaries (DuckDB enums, Parquet-backed readers); the cost is the size of
the decoded strings.

Copies. ``RecordBatch.serialize`` writes the message into one Arrow buffer (copy 1) and
``to_pybytes`` turns it into the ``bytes`` gRPC and the result cache need (copy 2). Slicing
a batch is zero-copy: the IPC writer writes only the sliced ranges of the buffers. On the
client, ``open_ipc_stream`` hands pyarrow zero-copy views of the received chunks.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.ipc as pa_ipc

if TYPE_CHECKING:
    # collections.abc.Buffer is 3.12+; the project supports 3.11.
    from typing_extensions import Buffer

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "END_OF_STREAM",
    "IpcChunker",
    "IpcStreamReader",
    "decode_page",
    "encode_page",
    "open_ipc_stream",
    "wire_schema",
]

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
"""gRPC's default receive limit; both ends raise their limits deliberately to match."""

END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The IPC end-of-stream marker: continuation token followed by a zero metadata length."""

# Bytes allowed per column (and once more for the message) for a record batch message's
# metadata and padding beyond its buffers: far above what Arrow writes (a few dozen bytes
# per buffer), so a batch within it is within the limit without measuring.
_METADATA_ALLOWANCE = 1024

# Slices are sized for this fraction of the limit, so that the estimate (which is a
# proportion of the serialized size) rarely overshoots and forces a re-slice.
_FILL = 0.9


def _decoded_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every dictionary type, at any depth, replaced by its value type."""
    if pa.types.is_dictionary(t):
        return _decoded_type(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(_decoded_field(t.value_field))
    if pa.types.is_large_list(t):
        return pa.large_list(_decoded_field(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_decoded_field(t.value_field), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(_decoded_field(t.key_field), _decoded_field(t.item_field), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([_decoded_field(t.field(i)) for i in range(t.num_fields)])
    return t


def _decoded_field(f: pa.Field) -> pa.Field:
    return f.with_type(_decoded_type(f.type))


def _has_dictionary(t: pa.DataType) -> bool:
    return not _decoded_type(t).equals(t)


def wire_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a result has on the wire: ``schema`` with dictionaries decoded."""
    if not any(_has_dictionary(f.type) for f in schema):
        return schema
    return pa.schema([_decoded_field(f) for f in schema], metadata=schema.metadata)


_SHARED: dict[tuple[int, int], IpcChunker] = {}
_SHARED_MAX = 512


class IpcChunker:
    """Cuts record batches into IPC messages of at most ``max_message_bytes`` each.

    One chunker serves one result; it is stateless between calls apart from its schemas,
    so the same instance may be reused for several results of the same schema.
    """

    __slots__ = ("_decode", "_max", "_schema_message", "_source_schema", "_wire_schema")

    def __init__(self, schema: pa.Schema, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self._max = max_message_bytes
        self._source_schema = schema
        self._wire_schema = wire_schema(schema)
        self._decode = self._wire_schema is not schema
        self._schema_message: bytes | None = None

    @classmethod
    def shared(
        cls, schema: pa.Schema, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> IpcChunker:
        """The chunker of this schema *object* and limit, built once and reused. Sources
        hand every result of a statement the same schema object (the PostgreSQL decoder
        does), and building a chunker and its schema message costs more than encoding a
        point query's batch; hashing a schema would cost about as much, so the key is the
        object's identity (the cache holds the schema, so the identity stays its own)."""
        key = (id(schema), max_message_bytes)
        chunker = _SHARED.get(key)
        if chunker is None or chunker._source_schema is not schema:
            if len(_SHARED) >= _SHARED_MAX:
                _SHARED.clear()
            chunker = _SHARED[key] = cls(schema, max_message_bytes)
        return chunker

    @property
    def schema(self) -> pa.Schema:
        """The wire schema (dictionaries decoded): what a reader of the stream will see."""
        return self._wire_schema

    @property
    def max_message_bytes(self) -> int:
        return self._max

    def schema_message(self) -> bytes:
        """The encapsulated schema message: the first message of every stream."""
        message = self._schema_message
        if message is None:
            message = self._schema_message = self._wire_schema.serialize().to_pybytes()
        return message

    def end_of_stream(self) -> bytes:
        """The end-of-stream marker: the last message of every stream."""
        return END_OF_STREAM

    def to_wire(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` as it travels: dictionaries decoded (a no-op without dictionaries)."""
        if self._decode:
            # Dictionary -> dense cast, at every depth; see the module docstring.
            return batch.cast(self._wire_schema)
        return batch

    def batch_messages(self, batch: pa.RecordBatch) -> Iterator[bytes]:
        """Serialize ``batch`` as one or more record-batch messages, each within the limit.

        The batch is sliced by rows (zero-copy). Rows per slice are estimated from the
        batch's serialized size; a slice whose serialized size still exceeds the limit
        (rows of uneven width) is cut smaller until it fits. A single row larger than the
        limit on its own is sent alone in a message larger than the limit: there is no
        smaller unit to send, and the receiver must accept it or fail loudly rather than
        lose data. Zero-row batches produce no message (the schema already says it all).

        Raises ``ValueError`` if the batch's schema differs from the chunker's (field
        names and types; schema metadata is not compared), since that would corrupt the
        stream for the reader.
        """
        if not batch.schema.equals(self._source_schema, check_metadata=False):
            raise ValueError("record batch schema does not match the stream schema")
        n = batch.num_rows
        if n == 0:
            return
        batch = self.to_wire(batch)
        limit = self._max
        if (
            batch.get_total_buffer_size() + _METADATA_ALLOWANCE * (1 + batch.num_columns)
            <= limit // 2
        ):
            # Surely within the limit (the buffers, a generous allowance for metadata and
            # padding, and half the limit to spare for nested types' extra fields): no
            # sizing pass, which costs a small batch as much as serializing it.
            yield batch.serialize().to_pybytes()
            return
        size = pa_ipc.get_record_batch_size(batch)
        if size <= limit:
            yield batch.serialize().to_pybytes()
            return
        # Average serialized bytes per row, from the exact size of the whole batch.
        rows_per_slice = max(1, int(n * limit * _FILL / size))
        offset = 0
        while offset < n:
            take = min(rows_per_slice, n - offset)
            while True:
                piece = batch.slice(offset, take)
                piece_size = pa_ipc.get_record_batch_size(piece)
                if piece_size <= limit or take == 1:
                    break
                # Shrink in proportion to the overshoot; strictly smaller each time, so
                # this terminates (at worst at one row).
                take = max(1, min(take - 1, int(take * limit * _FILL / piece_size)))
            yield piece.serialize().to_pybytes()
            offset += take

    def messages(self, batches: Iterable[pa.RecordBatch]) -> Iterator[bytes]:
        """The whole stream: schema message, batch messages, end-of-stream marker."""
        yield self.schema_message()
        for batch in batches:
            yield from self.batch_messages(batch)
        yield END_OF_STREAM


class IpcStreamReader(io.RawIOBase):
    """A read-only file over an iterator of chunks, pulled only as the reader needs bytes.

    ``pa.ipc.open_stream(IpcStreamReader(chunks))`` decodes batches as the chunks arrive;
    the stream is never concatenated. pyarrow reads through ``read_buffer`` when a file
    object has one, and wraps what it returns without copying; a read that falls inside
    one chunk is therefore a zero-copy view of that chunk (reads spanning chunks are
    joined, which only happens if the sender did not align chunks with messages).

    An exception raised by the chunk iterator (a broken gRPC stream) propagates out of
    the pyarrow reader unchanged.

    ``strict=True`` makes a read that the chunks cannot satisfy raise ``EOFError``
    instead of returning short. pyarrow takes a clean end of input between two messages
    as the end of the stream, so without this a stream cut at a message boundary would
    read as a complete, shorter result; a reader of a well-formed stream stops at the
    end-of-stream marker and never reads past it.
    """

    def __init__(self, chunks: Iterable[Buffer], *, strict: bool = False) -> None:
        super().__init__()
        self._strict = strict
        self._chunks: Iterator[Buffer] | None = iter(chunks)
        self._current = memoryview(b"")
        self._pos = 0  # position inside self._current
        self._offset = 0  # bytes handed out so far (tell)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def _fill(self) -> bool:
        """Make the current chunk non-empty; False at the end of the chunks."""
        while self._pos >= len(self._current):
            if self._chunks is None:
                return False
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._chunks = None
                self._current = memoryview(b"")
                self._pos = 0
                return False
            view = memoryview(chunk)
            self._current = view if view.format == "B" and view.ndim == 1 else view.cast("B")
            self._pos = 0
        return True

    def _take(self, n: int) -> memoryview:
        """Up to ``n`` bytes from the current chunk, as a view (caller has called _fill)."""
        end = min(self._pos + n, len(self._current))
        view = self._current[self._pos : end]
        self._pos = end
        self._offset += len(view)
        return view

    def readinto(self, buffer: Buffer) -> int:
        target = memoryview(buffer).cast("B")
        if len(target) == 0 or not self._fill():
            return 0
        view = self._take(len(target))
        target[: len(view)] = view
        return len(view)

    def read_buffer(self, size: int = -1) -> memoryview | bytes:
        """Exactly ``size`` bytes (fewer only at the end), zero-copy when within a chunk."""
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        if not self._fill():
            self._short_read()
            return b""
        first = self._take(size)
        if len(first) == size:
            return first
        parts: list[Buffer] = [first]
        missing = size - len(first)
        while missing > 0 and self._fill():
            part = self._take(missing)
            parts.append(part)
            missing -= len(part)
        if missing:
            self._short_read()
        return b"".join(parts)

    def _short_read(self) -> None:
        if self._strict:
            raise EOFError(
                "the result stream ended before its end-of-stream marker: the result is "
                "incomplete; retry the query"
            )

    def read(self, size: int | None = -1) -> bytes:
        # Full reads, not RawIOBase's short reads: readers of a message expect the number
        # of bytes they asked for unless the stream has ended.
        if size is None or size < 0:
            return self.readall()
        return bytes(self.read_buffer(size))

    def readall(self) -> bytes:
        parts: list[Buffer] = []
        while self._fill():
            parts.append(self._take(len(self._current)))
        return b"".join(parts)

    def close(self) -> None:
        # Drop the chunk iterator and the last chunk at once: they may hold result rows.
        self._chunks = None
        self._current = memoryview(b"")
        self._pos = 0
        super().close()


def open_ipc_stream(chunks: Iterable[Buffer]) -> pa.RecordBatchReader:
    """A reader of the batches of a stream delivered as ``chunks`` (e.g. gRPC payloads).

    Reads the schema (the first chunk) at once; the rest is pulled as batches are read.
    Raises ``EOFError`` (when read) if the chunks end before the end-of-stream marker.
    """
    return pa_ipc.open_stream(IpcStreamReader(chunks, strict=True))


def encode_page(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> bytes:
    """A complete, self-contained stream (schema, batches, end-of-stream) as one value.

    For small results (a page of a paged statement) that travel in one message; there is
    no size limit here, the caller sizes the page. Dictionaries are decoded as above.
    """
    chunker = IpcChunker(schema, max_message_bytes=sys.maxsize)
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, chunker.schema) as writer:
        for batch in batches:
            if not batch.schema.equals(schema, check_metadata=False):
                raise ValueError("record batch schema does not match the page schema")
            writer.write_batch(chunker.to_wire(batch))
    page: bytes = sink.getvalue().to_pybytes()
    return page


def decode_page(data: Buffer) -> pa.Table:
    """The table of a stream produced by ``encode_page`` (or any complete IPC stream).

    Zero-copy over ``data``: the returned table keeps ``data`` alive.
    """
    return pa_ipc.open_stream(pa.py_buffer(data)).read_all()
