"""The Python client against a real gRPC peer that records how each call ended: a call
read to its end completes with the server's status instead of being cancelled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pyarrow as pa
import pytest

from fabric.client import FabricClient
from fabric.errors import FabricError
from fabric.results.ipc import IpcChunker
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc

ROWS = 50_000


def _stream(extra: bool) -> list[pb.ResultChunk]:
    table = pa.table({"n": pa.array(range(ROWS), pa.int64())})
    chunker = IpcChunker(table.schema, max_message_bytes=64 * 1024)
    header = table.schema.serialize().to_pybytes()
    messages = [header]
    for batch in table.to_batches(max_chunksize=5_000):
        messages.extend(chunker.batch_messages(batch))
    chunks = [pb.ResultChunk(arrow_ipc=m) for m in messages]
    chunks.append(
        pb.ResultChunk(arrow_ipc=chunker.end_of_stream(), summary=pb.ResultSummary(rows=ROWS))
    )
    if extra:  # a misbehaving server: bytes after the end of the stream
        chunks.append(pb.ResultChunk(arrow_ipc=b"\0" * 8))
    return chunks


class RecordingQueryService(pb_grpc.QueryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.endings: list[str] = []
        self.ended = threading.Condition()

    async def Execute(
        self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ResultChunk]:
        chunks = _stream(extra=request.sql == "extra")
        if request.sql == "endless":  # the rest never comes: the client must cancel
            chunks = chunks[:3]
        ending = "cancelled"
        try:
            for chunk in chunks:
                yield chunk
            if request.sql == "endless":
                await asyncio.Event().wait()
            if request.sql == "late-error":  # a whole result, then a failed status
                await context.abort(grpc.StatusCode.DATA_LOSS, "the result was not kept")
            ending = "completed"
        finally:
            with self.ended:
                self.endings.append(ending)
                self.ended.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.ended:
            assert self.ended.wait_for(lambda: len(self.endings) >= count, timeout=10)
            return list(self.endings)


@pytest.fixture
def peer() -> Iterator[tuple[str, RecordingQueryService]]:
    service = RecordingQueryService()
    loop = asyncio.new_event_loop()
    server_box: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server()
        pb_grpc.add_QueryServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        server_box.append(server)
        return port

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"127.0.0.1:{port}", service
    finally:
        asyncio.run_coroutine_threadsafe(server_box[0].stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_result_read_whole_completes_the_call(peer: tuple[str, RecordingQueryService]) -> None:
    address, service = peer
    with FabricClient(address, timeout=10) as client:
        result = client.execute("c", "whole")
        assert result.table.num_rows == ROWS and result.summary.rows == ROWS
        assert client.query_batches("c", "batches").read_all().num_rows == ROWS
    assert service.wait_for(2) == ["completed", "completed"]


def test_a_stream_dropped_early_is_cancelled(peer: tuple[str, RecordingQueryService]) -> None:
    address, service = peer
    with FabricClient(address, timeout=10) as client:
        reader = client.query_batches("c", "endless")
        assert reader.read_next_batch().num_rows > 0
        reader.close()
        del reader
    assert service.wait_for(1) == ["cancelled"]


def test_data_after_the_end_of_the_result_is_an_error(
    peer: tuple[str, RecordingQueryService],
) -> None:
    address, _ = peer
    with (
        FabricClient(address, timeout=10) as client,
        pytest.raises(FabricError, match="after the end of the result"),
    ):
        client.execute("c", "extra")


def test_a_status_after_the_whole_result_still_reaches_the_caller(
    peer: tuple[str, RecordingQueryService],
) -> None:
    """The client reads the call's status: a failure reported after the last message is
    raised, not hidden behind a result that looked whole."""
    address, _ = peer
    with FabricClient(address, timeout=10) as client:
        with pytest.raises(FabricError, match="not kept"):
            client.execute("c", "late-error")
        with pytest.raises(FabricError, match="not kept"):
            client.query_batches("c", "late-error").read_all()
