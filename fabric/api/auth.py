"""Authentication on every gRPC call: a server interceptor verifies the bearer token and
checks the method's role before any handler (and so any pool or database) runs; the
verified identity reaches the servicers through a context variable."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fabric.api.query_service import ContextProvider
from fabric.api.status import abort_with
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT, RequestContext, Role
from fabric.errors import FabricError, InternalError, PermissionDenied
from fabric.security.authz import TokenVerifierLike, authenticate

_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "fabric_request_context", default=None
)


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


def _refusal(error: FabricError) -> Callable[..., Awaitable[Any]]:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_with(context, error)

    return refuse


def _refusing_handler(handler: grpc.RpcMethodHandler, error: FabricError) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that refuses the call with `error`. The request is
    never decoded (no deserializer): what an unauthenticated caller sent is not parsed."""
    refuse = _refusal(error)
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
    def __init__(self, verifier: TokenVerifierLike) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        try:
            ctx = authenticate(details.method, details.invocation_metadata, self._verifier)
        except FabricError as error:
            _CURRENT.set(None)
            return _refusing_handler(handler, error)
        # grpc.aio runs each call in its own task, awaiting the interceptors and then the
        # handler in that task: a variable set here is the handler's and no other call's,
        # and it ends with the task. (A wrapping generator that reset it could be finalized
        # in another task's context when the client leaves early, which fails.) None for
        # a public method (health, reflection); servicers then fail closed.
        _CURRENT.set(ctx)
        return handler
