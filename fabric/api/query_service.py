"""QueryService: the gRPC face of the query engine."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import grpc

from fabric.api.status import abort_with
from fabric.api.wire import page, result_chunk
from fabric.context import RequestContext
from fabric.errors import FabricError, InternalError, InvalidArgument
from fabric.proto_values import params_from_proto
from fabric.query.engine import Page, QueryEngine, QueryRequest
from fabric.query.runs import Summary
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ContextProvider = Callable[[grpc.aio.ServicerContext], RequestContext]
Execute = Callable[[RequestContext, QueryRequest, "float | None"], AsyncIterator["bytes | Summary"]]
"""Runs a query and yields the bytes of its Arrow IPC stream, then one Summary:
`QueryEngine.execute` (whole IPC messages), or `BusQueryForwarder.execute` on a platform
that forwards to runtime replicas (the replica's bytes, cut wherever the bus cut them)."""


@asynccontextmanager
async def translated_errors(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Turn every error into the right status. Unexpected errors become INTERNAL with a
    fixed message: their text may carry values, so only their type is logged."""
    try:
        yield
    except FabricError as error:
        await abort_with(context, error)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as error:
        log.error("internal error in %s: %s", method, type(error).__name__)
        await abort_with(
            context, InternalError("internal error in the gateway; its log names the error type")
        )


class ReadsCaller(Protocol):
    """A servicer that reads each call's caller through its context provider."""

    _context: ContextProvider


_Servicer = TypeVar("_Servicer", bound=ReadsCaller)
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def unary_rpc(
    method: Callable[
        [_Servicer, _Request, RequestContext, grpc.aio.ServicerContext], Awaitable[_Response]
    ],
) -> Callable[[_Servicer, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """A unary RPC from a method of (request, caller, gRPC context): the caller is read by
    the servicer's context provider, and every error becomes a status through
    `translated_errors`, named after the method."""
    name = method.__name__

    @functools.wraps(method)
    async def rpc(
        self: _Servicer, request: _Request, context: grpc.aio.ServicerContext
    ) -> _Response:
        async with translated_errors(context, name):
            return await method(self, request, self._context(context), context)
        raise AssertionError("unreachable: errors abort the call")

    return rpc


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _summary(summary: Summary) -> pb.ResultSummary:
    return pb.ResultSummary(
        rows=summary.rows,
        truncated=summary.truncated,
        from_cache=summary.from_cache,
        elapsed_us=summary.elapsed_us,
    )


def _request(message: pb.ExecuteRequest) -> QueryRequest:
    if not message.sql.strip():
        raise InvalidArgument("sql is required")
    return QueryRequest(
        connection=message.connection,
        sql=message.sql,
        params=params_from_proto(message.params),
        cache_ttl=float(message.cache_ttl_seconds),
        max_rows=message.max_rows if message.HasField("max_rows") else None,
        max_bytes=message.max_bytes if message.HasField("max_bytes") else None,
    )


def _page(result: Page) -> bytes:
    return page(
        result.statement_id,
        result.arrow_ipc,
        result.rows,
        result.done,
        _summary(result.summary) if result.summary is not None else None,
    )


class QueryServicer(pb_grpc.QueryServiceServicer):  # type: ignore[misc]
    """Execute and Preview run through `execute` (default: the engine's; a platform that
    forwards queries to runtime replicas passes the forwarder's). Preview's query is
    built from the local metadata; paging (OpenStatement, Fetch, CloseStatement) always
    runs on the local engine, since an open statement lives in one process's memory."""

    def __init__(
        self,
        engine: QueryEngine,
        context_provider: ContextProvider,
        execute: Execute | None = None,
    ) -> None:
        self._engine = engine
        self._context = context_provider
        self._execute: Execute = engine.execute if execute is None else execute
        self._max_message = engine.settings.max_message_bytes

    async def _stream(self, items: AsyncIterator[bytes | Summary]) -> AsyncIterator[bytes]:
        """Coalesce the stream's bytes into gRPC messages of up to max_message_bytes, so a
        small result is one gRPC message and a large one travels in few big ones; each is
        a `ResultChunk` already encoded (`fabric.api.wire`)."""
        buffer: list[bytes] = []
        size = 0
        summary: Summary | None = None
        try:
            async for item in items:
                if isinstance(item, Summary):
                    # Not sent yet: the engine finishes its bookkeeping (cache fill,
                    # metrics) when its generator runs to the end.
                    summary = item
                    continue
                if buffer and size + len(item) > self._max_message:
                    yield result_chunk(b"".join(buffer))
                    buffer, size = [], 0
                buffer.append(item)
                size += len(item)
        finally:
            await items.aclose()  # type: ignore[attr-defined]
        if summary is None:
            raise InternalError("the result ended without its summary")
        yield result_chunk(b"".join(buffer), _summary(summary))

    async def Execute(
        self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async with translated_errors(context, "Execute"):
            ctx = self._context(context)
            items = self._execute(ctx, _request(request), _deadline(context))
            async for chunk in self._stream(items):
                yield chunk

    async def Preview(
        self, request: pb.PreviewRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async with translated_errors(context, "Preview"):
            ctx = self._context(context)
            query = await self._engine.preview_request(
                ctx, request.connection, request.entity, request.limit
            )
            async for chunk in self._stream(self._execute(ctx, query, _deadline(context))):
                yield chunk

    @unary_rpc
    async def OpenStatement(
        self,
        request: pb.OpenStatementRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        page = await self._engine.open_statement(
            ctx, _request(request.query), request.page_rows, _deadline(context)
        )
        return _page(page)

    @unary_rpc
    async def Fetch(
        self, request: pb.FetchRequest, ctx: RequestContext, context: grpc.aio.ServicerContext
    ) -> bytes:
        return _page(await self._engine.fetch(ctx, request.statement_id, request.page_rows))

    @unary_rpc
    async def Explain(
        self,
        request: pb.ExplainRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.ExplainResponse:
        explained = await self._engine.explain(
            ctx, _request(request.query), analyze=request.analyze, deadline=_deadline(context)
        )
        return pb.ExplainResponse(
            federated=explained.federated,
            analyzed=explained.analyzed,
            parts=[
                pb.ExplainPart(
                    name=part.name,
                    connection=part.connection,
                    sql=part.sql,
                    accepted=list(part.accepted),
                    remaining=list(part.remaining),
                    rows=part.rows,
                    bytes=part.bytes,
                    dynamic_filter=part.dynamic_filter,
                )
                for part in explained.parts
            ],
        )

    @unary_rpc
    async def CloseStatement(
        self,
        request: pb.CloseStatementRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.CloseStatementResponse:
        await self._engine.close_statement(ctx, request.statement_id)
        return pb.CloseStatementResponse()
