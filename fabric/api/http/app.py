"""The REST API and the portal's files as one ASGI app (Starlette).

Every endpoint runs through `_run`, in this order: admitted into the gateway's count of
calls in flight (503 while it drains), the caller verified from the bearer token (401;
with authentication off, the local identity), the caller's role checked (403, recorded
on the audit trail like a gRPC refusal), the body read within its size limit and parsed
(413, 415, 400), then the handler. Every error becomes a JSON body from the one error
tree; an unexpected one is logged by type only and answered 500 with a fixed text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from fabric.api.http.body import Fields, read_json
from fabric.api.http.endpoint import Call, Endpoint, Reply, Services
from fabric.api.http.headers import SecurityHeaders
from fabric.api.http.responses import error_response, plain_error
from fabric.context import RequestContext, Role
from fabric.errors import FabricError, InternalError, PermissionDenied, Unauthenticated
from fabric.observability import tracing
from fabric.observability.access import REQUEST_ID_HEADER, current_call
from fabric.security.authz import require_role
from fabric.security.signin import APPS_CANNOT_SIGN_IN

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The portal's page and assets, shipped in the package."""

_BEARER = "bearer "
PROTOCOL = "rest"
"""The REST door's name in the access log, traces and metrics."""


def caller_of(request: Request, services: Services) -> RequestContext:
    """Who the call is: the verified bearer token, or the local identity when
    authentication is off (as the gRPC API with FABRIC_AUTH=none)."""
    if services.verifier is None:
        return services.local_identity
    count = services.engine.metrics.auth_failure
    header = request.headers.get("authorization", "")
    if not header:
        count("missing_token")
        raise Unauthenticated("no bearer token was presented (Authorization: Bearer <token>)")
    if header[: len(_BEARER)].lower() != _BEARER:
        count("missing_token")
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    try:
        return services.verifier.verify(header[len(_BEARER) :].strip())
    except FabricError:
        count("invalid_token")
        raise


async def _authorized(call: Call, endpoint: Endpoint) -> None:
    """PermissionDenied unless the caller's role reaches the endpoint's; app tokens are
    refused everywhere (the REST API serves the portal's people, not apps)."""
    assert endpoint.role is not None
    ctx = call.ctx
    try:
        if ctx.role is Role.APP:
            raise PermissionDenied(APPS_CANNOT_SIGN_IN)
        require_role(ctx, endpoint.role)
    except PermissionDenied as error:
        call.services.engine.metrics.auth_failure("role")
        method = f"REST {endpoint.method} {endpoint.path}"
        try:
            await asyncio.to_thread(call.services.refusals, ctx, method, error)
        except Exception as failure:  # the refusal stands whether or not it is recorded
            log.error("could not record a refused call: %s", type(failure).__name__)
        raise


async def _answer(endpoint: Endpoint, services: Services, request: Request) -> Response:
    try:
        async with services.admission():
            caller = None if endpoint.role is None else caller_of(request, services)
            record = current_call()
            if caller is not None and record is not None:
                record.identify(caller.principal, caller.tenant, caller.stage)
            call = Call(request, services, caller)
            if endpoint.role is not None:
                await _authorized(call, endpoint)
            if endpoint.request is not None:
                call.body = Fields(await read_json(request, services.max_body))
            result = await endpoint.handler(call)
            reply = result if isinstance(result, Reply) else Reply(result, endpoint.status)
            # A result of many rows takes a while to write out: off the event loop.
            body = await asyncio.to_thread(_json, reply.body)
    except FabricError as error:
        return error_response(error)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.error("internal error in REST %s: %s", endpoint.operation_id, type(error).__name__)
        return error_response(
            InternalError("internal error in the gateway; its log names the error type")
        )
    return Response(body, status_code=reply.status, media_type="application/json")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _run(endpoint: Endpoint, services: Services, request: Request) -> Response:
    """One call inside its access-log record and trace span (as a gRPC call's): the
    caller's `x-request-id` (or a new one) comes back as a response header."""
    method = f"{endpoint.method} {endpoint.path}"
    offered = request.headers.get(REQUEST_ID_HEADER)
    with (
        services.access.call(PROTOCOL, method, offered) as record,
        tracing.span(
            "fabric.call",
            {"http.request.method": endpoint.method, "http.route": endpoint.path},
            parent=tracing.extract(dict(request.headers)),
        ) as traced,
    ):
        traced.set("fabric.request_id", record.request_id)
        try:
            response = await _answer(endpoint, services, request)
        except asyncio.CancelledError:
            record.status = "CANCELLED"  # the caller went away
            raise
        if response.status_code >= 400:
            record.status = str(response.status_code)
            traced.fail(record.status)
        response.headers[REQUEST_ID_HEADER] = record.request_id
        return response


def _route(endpoint: Endpoint, services: Services) -> Route:
    async def serve(request: Request) -> Response:
        return await _run(endpoint, services, request)

    return Route(endpoint.path, serve, methods=[endpoint.method], name=endpoint.operation_id)


async def _index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return plain_error(405, "method_not_allowed", "this method is not allowed on this path")
    if error.status_code == 404:
        return plain_error(404, "not_found", "no such path")
    return plain_error(error.status_code, "http_error", "the request could not be served")


def create_app(services: Services, endpoints: list[Endpoint]) -> Starlette:
    routes: list[BaseRoute] = [_route(endpoint, services) for endpoint in endpoints]
    routes.append(Route("/", _index, methods=["GET"], include_in_schema=False))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    handlers: dict[Any, Any] = {HTTPException: _http_error}
    return Starlette(
        routes=routes, middleware=[Middleware(SecurityHeaders)], exception_handlers=handlers
    )
