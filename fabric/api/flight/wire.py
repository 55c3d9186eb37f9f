"""Flight's wire: Arrow IPC messages as `FlightData`, Flight SQL commands in `Any`.

A Flight stream is an Arrow IPC stream whose messages travel one per `FlightData`: the
message's flatbuffer header in `data_header`, its body in `data_body`, and no
end-of-stream marker (the gRPC stream ends instead). The engine already yields the
result as encapsulated IPC messages (continuation marker, header length, header, body),
so a message becomes a `FlightData` by cutting it at the header's end: nothing is
decoded or re-encoded on the way out. The encoding is written by hand, as protobuf would
write it (field 2, then field 1000), for the reason `fabric.api.wire` gives: building a
4 MiB protobuf message through upb costs tens of times more than one join.

Parameters arrive the other way round (DoPut): `FlightData` messages are put back
together into an IPC stream and read by pyarrow.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.ipc as pa_ipc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from fabric.api.wire import varint
from fabric.errors import InvalidArgument
from fabric.results.ipc import END_OF_STREAM, IpcChunker
from fabric.v1 import flight_pb2

_CONTINUATION = b"\xff\xff\xff\xff"
_LENGTH = struct.Struct("<i")
_DATA_HEADER = b"\x12"  # FlightData field 2, length-delimited
_DATA_BODY = b"\xc2\x3e"  # FlightData field 1000, length-delimited
TYPE_URL_PREFIX = "type.googleapis.com/"

M = TypeVar("M", bound=Message)


def flight_data(message: bytes) -> bytes | None:
    """The wire form of the `FlightData` carrying one encapsulated IPC message; None for
    the end-of-stream marker, which Flight does not send."""
    if len(message) < 8 or message[:4] != _CONTINUATION:
        raise ValueError("not an encapsulated Arrow IPC message")
    (length,) = _LENGTH.unpack_from(message, 4)
    if length == 0:
        return None
    view = memoryview(message)
    header = view[8 : 8 + length]
    body = view[8 + length :]
    parts: list[bytes | memoryview] = [_DATA_HEADER, varint(len(header)), header]
    if len(body):
        parts += (_DATA_BODY, varint(len(body)), body)
    return b"".join(parts)


def schema_message(schema: pa.Schema) -> bytes:
    """A schema as FlightInfo, SchemaResult and Flight SQL carry it: one encapsulated IPC
    schema message."""
    return IpcChunker.shared(schema).schema_message()


def table_messages(table: pa.Table) -> Iterator[bytes]:
    """A (small) table as encapsulated IPC messages: schema, then its batches."""
    chunker = IpcChunker.shared(table.schema)
    yield chunker.schema_message()
    for batch in table.to_batches():
        if batch.num_rows:
            yield from chunker.batch_messages(batch)


def read_flight_stream(datas: Iterable[flight_pb2.FlightData]) -> pa.Table:
    """The record batches sent as `FlightData` (schema first), as one table."""
    chunks: list[bytes] = []
    for data in datas:
        header = data.data_header
        if not header:
            continue  # a message carrying only a descriptor or app metadata
        padding = -len(header) % 8
        chunks += (
            _CONTINUATION,
            _LENGTH.pack(len(header) + padding),
            header,
            b"\x00" * padding,
            data.data_body,
        )
    if not chunks:
        raise InvalidArgument("the stream carries no Arrow schema; send the parameters as Arrow")
    chunks.append(END_OF_STREAM)
    try:
        return pa_ipc.open_stream(pa.py_buffer(b"".join(chunks))).read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        raise InvalidArgument("the stream is not valid Arrow IPC") from None


# -- google.protobuf.Any ----------------------------------------------------------------


def type_name(any_message: any_pb2.Any) -> str:
    """The full message name an `Any` holds (`arrow.flight.protocol.sql.CommandGetTables`)."""
    url: str = any_message.type_url
    return url.rsplit("/", 1)[-1]


def parse_any(raw: bytes, what: str) -> any_pb2.Any:
    """`raw` as a google.protobuf.Any; InvalidArgument when it is not one."""
    try:
        wrapped = any_pb2.Any.FromString(raw)
    except DecodeError:
        wrapped = None
    if wrapped is None or not wrapped.type_url:
        raise InvalidArgument(
            f"the {what} is not a Flight SQL command (a google.protobuf.Any); use a Flight "
            "SQL client"
        )
    return wrapped


def unpack(any_message: any_pb2.Any, cls: type[M]) -> M:
    """The message an `Any` holds, as `cls`; InvalidArgument when it does not parse."""
    message: M = cls()
    if not any_message.Unpack(message):
        raise InvalidArgument(f"the {cls.DESCRIPTOR.name} command does not parse")
    return message


def pack(message: Message) -> bytes:
    """`message` in an Any, serialized (how Flight SQL sends commands and results)."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    encoded: bytes = wrapped.SerializeToString()
    return encoded
