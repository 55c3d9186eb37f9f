"""Authentication on every gRPC call: a server interceptor verifies the bearer token and
checks the method's role before any handler (and so any pool or database) runs; the
verified identity reaches the servicers through a context variable."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fabric.api.query_service import ContextProvider
from fabric.api.status import abort_with
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT, RequestContext, Role
from fabric.errors import FabricError, InternalError, PermissionDenied
from fabric.observability import tracing
from fabric.security.authz import (
    TokenVerifierLike,
    authorize,
    bearer_token,
    is_public,
)

log = logging.getLogger(__name__)

RefusalRecorder = Callable[[RequestContext, str, PermissionDenied], None]
"""Records a call refused to a verified caller for its role (blocking: it writes the
audit trail; called off the event loop)."""

_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "fabric_request_context", default=None
)


AUTH_TIMING: contextvars.ContextVar[tuple[int, int, str] | None] = contextvars.ContextVar(
    "fabric_auth_timing", default=None
)
"""While tracing: when this task's call was authenticated (time.time_ns() at the start
and end) and how it came out ("ok" or the refusal's reason), for the call's
`fabric.auth` span, which the access scope records once the call span is open."""


def current_identity() -> RequestContext | None:
    """The verified caller of the call this task serves (None before authentication,
    for a public method, or with authentication off)."""
    return _CURRENT.get()


def verified_context(_: grpc.aio.ServicerContext) -> RequestContext:
    """The context provider servicers use when authentication is on."""
    ctx = _CURRENT.get()
    if ctx is None:
        # The interceptor sets it for every non-public method; reaching here is a bug,
        # and failing closed is the only safe answer.
        raise InternalError("the call reached a servicer without a verified identity")
    return ctx


LOCAL_ADMIN = RequestContext(
    tenant=DEFAULT_TENANT, stage=DEFAULT_STAGE, role=Role.ADMIN, principal="local"
)
"""Who every call is when authentication is off (FABRIC_AUTH=none, loopback only)."""


def local_admin_context(_: grpc.aio.ServicerContext) -> RequestContext:
    """The context provider servicers use when authentication is off: every call is the
    local administrator of the default tenant and stage."""
    return LOCAL_ADMIN


def local_admin_of(stage: str) -> ContextProvider:
    """`local_admin_context` for a process that serves one stage: every call is the
    local administrator of the default tenant in `stage`."""
    admin = dataclasses.replace(LOCAL_ADMIN, stage=stage)

    def provide(_: grpc.aio.ServicerContext) -> RequestContext:
        return admin

    return provide


APPS_GO_TO_THEIR_STAGE = (
    "this is the platform, which serves developers and administrators; an app queries "
    "its stage's runtime replicas directly (the stage's address). An operator can let "
    "the platform forward apps' queries too with FABRIC_PLATFORM_APP_QUERIES=true"
)
"""Why an app token's query is refused by a platform that does not serve apps."""


def refusing_apps(provider: ContextProvider) -> ContextProvider:
    """`provider`, except that a caller with the app role is refused (PermissionDenied,
    `APPS_GO_TO_THEIR_STAGE`): the platform's QueryService when it serves no apps."""

    def provide(context: grpc.aio.ServicerContext) -> RequestContext:
        ctx = provider(context)
        if ctx.role is Role.APP:
            raise PermissionDenied(APPS_GO_TO_THEIR_STAGE)
        return ctx

    return provide


def _refusal(
    error: FabricError, record: Callable[[], None] | None
) -> Callable[..., Awaitable[Any]]:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        if record is not None:
            try:
                await asyncio.to_thread(record)
            except Exception as failure:  # the refusal stands whether or not it is recorded
                log.error("could not record a refused call: %s", type(failure).__name__)
        await abort_with(context, error)

    return refuse


def _refusing_handler(
    handler: grpc.RpcMethodHandler, error: FabricError, record: Callable[[], None] | None = None
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that refuses the call with `error` (after `record`,
    if given, ran in a worker thread). The request is never decoded (no deserializer):
    what an unauthenticated caller sent is not parsed."""
    refuse = _refusal(error, record)
    undecoded = None

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # For both kinds that answer with a stream; `request` is the request iterator
        # when the call streams requests too.
        await refuse(request, context)
        yield  # pragma: no cover - abort raises

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, undecoded, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream, undecoded, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, undecoded, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        refuse_stream, undecoded, handler.response_serializer
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Verifies the bearer token and the method's role of every call; a verified caller
    refused for its role is told to `on_refused` (the audit trail) before the refusal."""

    def __init__(
        self,
        verifier: TokenVerifierLike,
        on_refused: RefusalRecorder | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """`on_failure(reason)` counts each refusal (`AUTH_FAILURE_REASONS` of
        `fabric.observability.metrics`)."""
        self._verifier = verifier
        self._on_refused = on_refused
        self._on_failure = on_failure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        ctx: RequestContext | None = None
        reason = "missing_token"
        started = time.time_ns() if tracing.tracing_enabled() else 0
        try:
            if not is_public(details.method):
                token = bearer_token(details.invocation_metadata)
                reason = "invalid_token"
                ctx = self._verifier.verify(token)
                reason = "role"
                authorize(details.method, ctx)
        except FabricError as error:
            _CURRENT.set(None)
            if started:
                AUTH_TIMING.set((started, time.time_ns(), reason))
            if self._on_failure is not None:
                if reason == "invalid_token" and isinstance(error, PermissionDenied):
                    reason = "wrong_stage"  # a genuine token of another stage (a replica)
                self._on_failure(reason)
            record = None
            if isinstance(error, PermissionDenied) and ctx is not None and self._on_refused:
                record = functools.partial(self._on_refused, ctx, details.method, error)
            return _refusing_handler(handler, error, record)
        # grpc.aio runs each call in its own task, awaiting the interceptors and then the
        # handler in that task: a variable set here is the handler's and no other call's,
        # and it ends with the task. (A wrapping generator that reset it could be finalized
        # in another task's context when the client leaves early, which fails.) None for
        # a public method (health, reflection); servicers then fail closed.
        _CURRENT.set(ctx)
        if started:
            AUTH_TIMING.set((started, time.time_ns(), "ok"))
        return handler
