"""The client with several addresses: calls go round-robin, a call refused before its
first chunk is taken to the next address, a call cut after it is not, and an open
statement stays where it was opened.

The servers are real gRPC servers on port 0 in this process, each answering QueryService
calls the way a test tells it to (a replica that is gone, starting, whose source is
down, that dies mid-stream, or that answers), and counting what it was asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fabric.api.status import ERROR_CODE_KEY
from fabric.api.wire import result_chunk
from fabric.client import FabricClient, addresses_of
from fabric.errors import GatewayUnavailable, InvalidArgument, SourceUnavailable
from fabric.results.ipc import encode_page
from fabric.v1 import query_pb2 as pb

TABLE = pa.table({"n": [1, 2, 3]})
IPC = encode_page(TABLE.schema, TABLE.to_batches())
SUMMARY = pb.ResultSummary(rows=3)


class Replica:
    """A gRPC server that answers every Execute as `behaviour` says."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Execute": grpc.unary_stream_rpc_method_handler(self.execute),
            "OpenStatement": grpc.unary_unary_rpc_method_handler(self.open_statement),
            "Fetch": grpc.unary_unary_rpc_method_handler(self.fetch),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fabric.v1.QueryService", handlers),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _refuse(self, context: grpc.ServicerContext) -> None:
        if self.behaviour == "starting":
            context.set_trailing_metadata(((ERROR_CODE_KEY, GatewayUnavailable.code),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "this runtime replica is not ready yet")
        if self.behaviour == "source-down":
            context.set_trailing_metadata(((ERROR_CODE_KEY, SourceUnavailable.code),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the source does not answer")
        if self.behaviour == "gone":
            context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")

    def execute(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls.append("Execute")
        self._refuse(context)
        if self.behaviour == "dies-mid-stream":
            yield result_chunk(IPC[: len(IPC) // 2])
            context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        yield result_chunk(IPC, SUMMARY)

    def open_statement(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append("OpenStatement")
        self._refuse(context)
        page = pb.Page(statement_id=f"st-{self.port}", arrow_ipc=IPC, rows=3, done=False)
        encoded: bytes = page.SerializeToString()
        return encoded

    def fetch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append("Fetch")
        asked = pb.FetchRequest.FromString(request)
        if asked.statement_id != f"st-{self.port}":
            context.abort(grpc.StatusCode.NOT_FOUND, "statement not found")
        page = pb.Page(statement_id=asked.statement_id, arrow_ipc=IPC, rows=3, done=True)
        encoded: bytes = page.SerializeToString()
        return encoded

    def stop(self) -> None:
        self._server.stop(0)


def replicas(stack: ExitStack, *behaviours: str) -> list[Replica]:
    started = []
    for behaviour in behaviours:
        replica = Replica(behaviour)
        stack.callback(replica.stop)
        started.append(replica)
    return started


def client(replicas: list[Replica], **options: Any) -> FabricClient:
    return FabricClient(",".join(r.address for r in replicas), "token", timeout=10, **options)


def test_addresses_are_a_list_or_comma_separated() -> None:
    assert addresses_of(" a:1, b:2 ,") == ["a:1", "b:2"]
    assert addresses_of(["dns:///fabric-production:50051"]) == ["dns:///fabric-production:50051"]
    with pytest.raises(InvalidArgument):
        addresses_of(" , ")


def test_calls_go_round_robin_over_the_addresses() -> None:
    with ExitStack() as stack:
        one, two = replicas(stack, "answers", "answers")
        with client([one, two]) as c:
            for _ in range(6):
                assert c.query("crm", "SELECT 1").equals(TABLE)
        assert (len(one.calls), len(two.calls)) == (3, 3)


@pytest.mark.parametrize("refusal", ["gone", "starting"])
def test_a_call_refused_before_its_first_chunk_goes_to_the_next_address(refusal: str) -> None:
    with ExitStack() as stack:
        refusing, answering = replicas(stack, refusal, "answers")
        with client([refusing, answering]) as c:
            for _ in range(4):  # every call starts on either; each is answered
                assert c.execute("crm", "SELECT 1").table.equals(TABLE)
        assert len(answering.calls) == 4
        assert len(refusing.calls) == 2


def test_an_address_nobody_listens_on_is_skipped() -> None:
    with ExitStack() as stack:
        (answering,) = replicas(stack, "answers")
        closed = Replica("answers")
        closed.stop()  # its port refuses connections now
        with FabricClient(f"{closed.address},{answering.address}", "token", timeout=10) as c:
            for _ in range(4):
                assert c.query("crm", "SELECT 1").equals(TABLE)
        assert len(answering.calls) == 4


def _outcomes(c: FabricClient, calls: int) -> list[str]:
    """What each of `calls` executions ended with: "ok" or the error's class name."""
    outcomes = []
    for _ in range(calls):
        try:
            c.execute("crm", "SELECT 1")
        except SourceUnavailable as error:
            outcomes.append(type(error).__name__)
        else:
            outcomes.append("ok")
    return outcomes


def test_a_call_cut_after_its_first_chunk_is_not_retried() -> None:
    with ExitStack() as stack:
        dying, answering = replicas(stack, "dies-mid-stream", "answers")
        with client([dying, answering]) as c:
            outcomes = _outcomes(c, 4)
        # Half the calls start on each; those cut mid-stream fail, and are not run again
        # elsewhere: part of their result had arrived.
        assert sorted(outcomes) == ["GatewayUnavailable", "GatewayUnavailable", "ok", "ok"]
        assert len(dying.calls) == 2 and len(answering.calls) == 2


def test_a_source_that_is_down_is_not_tried_on_every_replica() -> None:
    with ExitStack() as stack:
        down, answering = replicas(stack, "source-down", "answers")
        with client([down, answering]) as c:
            outcomes = _outcomes(c, 4)
        assert sorted(outcomes) == ["SourceUnavailable", "SourceUnavailable", "ok", "ok"]
        assert len(down.calls) == 2 and len(answering.calls) == 2


def test_retries_are_bounded() -> None:
    with ExitStack() as stack:
        first, second = replicas(stack, "gone", "gone")
        with client([first, second], retries=2) as c, pytest.raises(SourceUnavailable):
            c.execute("crm", "SELECT 1")
        assert len(first.calls) + len(second.calls) == 3
        with client([first, second], retries=0) as c, pytest.raises(SourceUnavailable):
            c.execute("crm", "SELECT 1")
        assert len(first.calls) + len(second.calls) == 4


def test_an_open_statement_is_fetched_where_it_was_opened() -> None:
    with ExitStack() as stack:
        one, two = replicas(stack, "answers", "answers")
        with client([one, two]) as c:
            for _ in range(4):
                statement = c.open_statement("crm", "SELECT 1")
                assert statement.fetch() is not None  # the first page, from the open
                assert statement.fetch() is not None  # a Fetch: where it was opened
        assert one.calls == ["OpenStatement", "Fetch"] * 2
        assert two.calls == ["OpenStatement", "Fetch"] * 2


def test_a_statement_refused_while_a_replica_starts_is_opened_elsewhere() -> None:
    with ExitStack() as stack:
        starting, answering = replicas(stack, "starting", "answers")
        with client([starting, answering]) as c:
            for _ in range(2):
                statement = c.open_statement("crm", "SELECT 1")
                assert statement.fetch() is not None
                assert statement.fetch() is not None
        assert answering.calls == ["OpenStatement", "Fetch"] * 2
