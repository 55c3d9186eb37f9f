"""The access log at the gRPC doors (the query API and Flight SQL): every call but health
and reflection gets a record (`fabric.observability.access`), its request id sent back
in the trailing metadata (so with the result and with any error: `abort_with` puts it
there too), its status taken from how the call ended.

Trailing, not initial, metadata: gRPC sends trailers with the call's status at no cost,
while initial metadata sent by the handler is a write of its own before the first reply
(it cost the cached-query path about a tenth of its throughput)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import grpc

from fabric.api.auth import AUTH_TIMING, current_identity
from fabric.observability import tracing
from fabric.observability.access import REQUEST_ID_HEADER, AccessLog, CallRecord
from fabric.security.authz import is_public


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (the request id, a W3C `traceparent`)."""
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


_REFUSAL_STATUS = {
    "missing_token": "UNAUTHENTICATED",
    "invalid_token": "UNAUTHENTICATED",
    "wrong_stage": "PERMISSION_DENIED",
    "role": "PERMISSION_DENIED",
}
"""The status a refusal by authentication ends the call with, by its reason."""


def _add_trailer(context: grpc.aio.ServicerContext, key: str, value: str) -> None:
    """Add `key` to the trailing metadata the handler set (if any), keeping its own."""
    kept = [(k, v) for k, v in context.trailing_metadata() or () if k != key]
    context.set_trailing_metadata((*kept, (key, value)))


def _status_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The outermost interceptor: a refusal by authentication is logged too."""

    def __init__(self, access: AccessLog, protocol: str) -> None:
        self._access = access
        self._protocol = protocol

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or is_public(details.method):
            return handler
        return logged_handler(handler, details.method, self._scope)

    @asynccontextmanager
    async def _scope(
        self, context: grpc.aio.ServicerContext, method: str
    ) -> AsyncIterator[CallRecord]:
        metadata = _metadata(context)
        # Authentication ran before this scope (in its interceptor, in this task): the
        # call's span starts when it did, and it becomes the call's first child.
        authenticated = AUTH_TIMING.get()
        with (
            self._access.call(self._protocol, method, metadata.get(REQUEST_ID_HEADER)) as record,
            tracing.span(
                "fabric.call",
                {"rpc.method": method, "fabric.protocol": self._protocol},
                parent=tracing.extract(metadata),
                start_time=authenticated[0] if authenticated is not None else None,
            ) as traced,
        ):
            traced.set("fabric.request_id", record.request_id)
            if authenticated is not None:
                started, ended, outcome = authenticated
                tracing.record(
                    "fabric.auth",
                    {"fabric.auth.outcome": outcome},
                    started,
                    ended,
                    failed=_REFUSAL_STATUS.get(outcome),
                )
            try:
                yield record
                _add_trailer(context, REQUEST_ID_HEADER, record.request_id)
            except (asyncio.CancelledError, GeneratorExit):
                record.status = "CANCELLED"  # the caller went away
                raise
            except grpc.aio.AbortError:
                record.status = _status_name(context.code())
                traced.fail(record.status)
                raise
            finally:
                identity = current_identity()
                if identity is not None and not record.principal:
                    record.identify(identity.principal, identity.tenant, identity.stage)


Scope = Callable[[grpc.aio.ServicerContext, str], Any]


def logged_handler(
    handler: grpc.RpcMethodHandler, method: str, scope: Scope
) -> grpc.RpcMethodHandler:
    """`handler` with each call inside `scope` (an async context manager per call); a
    handler of a kind it does not know is returned as it is."""
    decode, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
        unary_unary = handler.unary_unary

        async def one_to_one(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context, method):
                return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(one_to_one, decode, serialize)
    if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
        unary_stream = handler.unary_stream

        async def one_to_many(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context, method), aclosing(unary_stream(request, context)) as out:
                async for reply in out:
                    yield reply

        return grpc.unary_stream_rpc_method_handler(one_to_many, decode, serialize)
    if handler.unary_stream and inspect.iscoroutinefunction(handler.unary_stream):
        writer = handler.unary_stream

        async def one_to_written(request: Any, context: grpc.aio.ServicerContext) -> None:
            async with scope(context, method):
                await writer(request, context)

        return grpc.unary_stream_rpc_method_handler(one_to_written, decode, serialize)
    if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
        stream_stream = handler.stream_stream

        async def many_to_many(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context, method), aclosing(stream_stream(requests, context)) as out:
                async for reply in out:
                    yield reply

        return grpc.stream_stream_rpc_method_handler(many_to_many, decode, serialize)
    if handler.stream_unary and inspect.iscoroutinefunction(handler.stream_unary):
        stream_unary = handler.stream_unary

        async def many_to_one(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context, method):
                return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(many_to_one, decode, serialize)
    return handler
