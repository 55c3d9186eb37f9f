"""The hand-encoded ResultChunk is byte for byte what protobuf writes."""

from __future__ import annotations

import pytest

from fabric.api.wire import page, result_chunk, serialize_result
from fabric.v1 import query_pb2 as pb

SUMMARIES = [
    None,
    pb.ResultSummary(),  # set but all defaults: still present on the wire
    pb.ResultSummary(rows=1),
    pb.ResultSummary(rows=2**40, truncated=True, from_cache=True, elapsed_us=123_456_789),
]


@pytest.mark.parametrize(
    "size", [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152, 4 << 20]
)
@pytest.mark.parametrize("summary", SUMMARIES, ids=["none", "empty", "rows", "full"])
def test_result_chunk_is_protobufs_encoding(size: int, summary: pb.ResultSummary | None) -> None:
    data = bytes(i % 251 for i in range(size))
    expected = pb.ResultChunk(arrow_ipc=data, summary=summary).SerializeToString()
    encoded = result_chunk(data, summary)
    assert encoded == expected
    parsed = pb.ResultChunk.FromString(encoded)
    assert parsed.arrow_ipc == data
    assert parsed.HasField("summary") is (summary is not None)


def test_the_serializer_passes_encoded_chunks_and_serializes_messages() -> None:
    encoded = result_chunk(b"abc", pb.ResultSummary(rows=3))
    assert serialize_result(encoded) is encoded
    message = pb.ResultChunk(arrow_ipc=b"abc", summary=pb.ResultSummary(rows=3))
    assert serialize_result(message) == encoded


@pytest.mark.parametrize("size", [0, 1, 200, 70_000])
@pytest.mark.parametrize("summary", SUMMARIES, ids=["none", "empty", "rows", "full"])
@pytest.mark.parametrize(
    ("statement_id", "rows", "done"), [("", 0, False), ("st-1", 5, False), ("", 70_000, True)]
)
def test_page_is_protobufs_encoding(
    size: int, summary: pb.ResultSummary | None, statement_id: str, rows: int, done: bool
) -> None:
    data = bytes(i % 251 for i in range(size))
    expected = pb.Page(
        statement_id=statement_id, arrow_ipc=data, rows=rows, done=done, summary=summary
    ).SerializeToString()
    assert page(statement_id, data, rows, done, summary) == expected
