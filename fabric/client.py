"""The Python client: SQL and parameters in, `pyarrow` tables and readers out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa

from fabric.api.status import ERROR_CODE_KEY, RETRY_AFTER_KEY, SQLSTATE_KEY, error_from_rpc
from fabric.errors import FabricError
from fabric.proto_values import params_to_proto
from fabric.results.ipc import decode_page, open_ipc_stream
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc

__all__ = ["FabricClient", "QueryResult", "ResultSummary", "Statement"]

MAX_MESSAGE = 256 << 20


@dataclass(frozen=True, slots=True)
class ResultSummary:
    rows: int
    truncated: bool
    from_cache: bool
    elapsed_us: int
    """Time the gateway spent on the call."""

    @staticmethod
    def of(message: pb.ResultSummary) -> ResultSummary:
        return ResultSummary(
            message.rows, message.truncated, message.from_cache, message.elapsed_us
        )


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table
    summary: ResultSummary


def _translate(error: grpc.RpcError) -> FabricError:
    call: Any = error
    trailing = dict(call.trailing_metadata() or ())
    return error_from_rpc(
        call.code(),
        call.details() or "",
        trailing.get(ERROR_CODE_KEY),
        trailing.get(SQLSTATE_KEY),
        trailing.get(RETRY_AFTER_KEY),
    )


class _Stream:
    """Pulls ResultChunks, hands their IPC bytes to pyarrow, keeps the summary."""

    def __init__(self, call: Iterator[pb.ResultChunk]) -> None:
        self._call = call
        self.summary: ResultSummary | None = None
        self.chunks: Iterator[bytes] = self._pull()

    def _pull(self) -> Iterator[bytes]:
        try:
            for chunk in self._call:
                # The summary rides on the last chunk, whose bytes end the IPC stream:
                # the reader stops right after them, so take the summary first.
                if chunk.HasField("summary"):
                    self.summary = ResultSummary.of(chunk.summary)
                if chunk.arrow_ipc:
                    yield chunk.arrow_ipc
        except grpc.RpcError as error:
            raise _translate(error) from None

    def finish(self) -> None:
        """Read the call to its end once the IPC stream has ended, so it completes with
        the gateway's status instead of being cancelled when dropped (a cancelled call
        costs the gateway an abort and hides a status that arrives late)."""
        for _ in self.chunks:
            raise FabricError("the gateway sent data after the end of the result")

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """Around the reading of the IPC stream: `finish` the call when the reading
        completes, cancel it when the reading fails or is abandoned."""
        try:
            yield
            self.finish()
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()


class Statement:
    """An open statement: pages of a result, fetched on demand. Close it (or use it as a
    context manager) when done; the gateway drops its rows and parameters at once."""

    def __init__(self, client: FabricClient, first: pb.Page, page_rows: int = 0) -> None:
        self._client = client
        self.page_rows = page_rows
        self.id = first.statement_id
        self._pages: list[pb.Page] = [first]
        self.done = first.done
        self.summary: ResultSummary | None = (
            ResultSummary.of(first.summary) if first.HasField("summary") else None
        )

    def fetch(self, page_rows: int | None = None) -> pa.Table | None:
        """The next page (of `page_rows`, by default the size the statement was opened
        with), or None when the statement is consumed."""
        if page_rows is None:
            page_rows = self.page_rows
        if self._pages:
            return decode_page(self._pages.pop().arrow_ipc)
        if self.done:
            return None
        page = self._client._unary(
            self._client._stub.Fetch, pb.FetchRequest(statement_id=self.id, page_rows=page_rows)
        )
        self.done = page.done
        if page.HasField("summary"):
            self.summary = ResultSummary.of(page.summary)
        return decode_page(page.arrow_ipc)

    def __iter__(self) -> Iterator[pa.Table]:
        while (page := self.fetch()) is not None:
            yield page

    def close(self) -> None:
        if not self.done and self.id:
            self.done = True
            self._pages.clear()
            self._client._unary(
                self._client._stub.CloseStatement, pb.CloseStatementRequest(statement_id=self.id)
            )

    def __enter__(self) -> Statement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FabricClient:
    """`FabricClient("127.0.0.1:50051")`; errors are the gateway's own FabricError classes
    (QueryRejected, NotFound, SourceUnavailable, ...)."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
    ) -> None:
        """`tls_ca` (PEM) trusts the gateway's CA; `tls_cert`/`tls_key` are the client's
        own certificate for mutual TLS; `tls=True` alone uses the system's roots."""
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if tls or tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.QueryServiceStub(self._channel)
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*auth, *metadata)
        self._timeout = timeout

    def _request(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None,
        cache_ttl: int,
        max_rows: int | None,
        max_bytes: int | None = None,
    ) -> pb.ExecuteRequest:
        return pb.ExecuteRequest(
            connection=connection,
            sql=sql,
            params=params_to_proto(params),
            cache_ttl_seconds=cache_ttl,
            max_rows=max_rows,
            max_bytes=max_bytes,
        )

    def _start(self, method: Any, request: Any) -> Any:
        """Call a stub method with this client's timeout and metadata."""
        return method(request, timeout=self._timeout, metadata=self._metadata)

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return self._start(method, request)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def _read(self, call: Iterator[pb.ResultChunk]) -> QueryResult:
        stream = _Stream(call)
        with stream.finishing():
            table = open_ipc_stream(stream.chunks).read_all()
        if stream.summary is None:
            raise FabricError("the gateway ended the result without its summary")
        return QueryResult(table, stream.summary)

    def execute(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> QueryResult:
        """The whole result and its summary (rows, truncated, from_cache, time spent);
        `truncated` when the result had more rows than max_rows or more bytes than
        max_bytes (each capped by the gateway's own limit)."""
        request = self._request(connection, sql, params, cache_ttl, max_rows, max_bytes)
        return self._read(self._start(self._stub.Execute, request))

    def query(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> pa.Table:
        return self.execute(connection, sql, params, cache_ttl, max_rows, max_bytes=max_bytes).table

    def query_batches(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the result batch by batch as it arrives."""
        request = self._request(connection, sql, params, cache_ttl, max_rows, max_bytes)
        stream = _Stream(self._start(self._stub.Execute, request))
        reader = open_ipc_stream(stream.chunks)

        def batches() -> Iterator[pa.RecordBatch]:
            with stream.finishing():
                yield from reader

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def preview(self, connection: str, entity: str, limit: int = 0) -> pa.Table:
        request = pb.PreviewRequest(connection=connection, entity=entity, limit=limit)
        return self._read(self._start(self._stub.Preview, request)).table

    def open_statement(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        page_rows: int = 0,
        *,
        max_bytes: int | None = None,
    ) -> Statement:
        request = pb.OpenStatementRequest(
            query=self._request(connection, sql, params, cache_ttl, max_rows, max_bytes),
            page_rows=page_rows,
        )
        return Statement(self, self._unary(self._stub.OpenStatement, request), page_rows)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FabricClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
