"""Sign-in, the caller's identity, live figures and the API's own description."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fabric.api.http import schemas as s
from fabric.api.http.endpoint import Call, Endpoint
from fabric.api.http.stats import stats as read_stats
from fabric.context import RequestContext, Role
from fabric.errors import FailedPrecondition


def _identity(ctx: RequestContext) -> dict[str, str]:
    return {
        "principal": ctx.principal,
        "role": ctx.role.value,
        "tenant": ctx.tenant,
        "stage": ctx.stage,
    }


async def create_session(call: Call) -> Any:
    call.body.only("code")
    code = call.body.required_string("code")
    sign_in = call.services.sign_in
    if sign_in is None:
        raise FailedPrecondition(
            "sign-in codes need FABRIC_AUTH=local (the local key signs them); sign in to the "
            "portal with a bearer token from your issuer instead"
        )
    session = await asyncio.to_thread(sign_in.exchange, code)
    expires = dt.datetime.fromtimestamp(session.expires_at, dt.UTC)
    return {
        "token": session.token,
        "expires_at": expires.isoformat(),
        **_identity(session.identity),
    }


async def me(call: Call) -> Any:
    return _identity(call.ctx)


async def stats(call: Call) -> Any:
    return await asyncio.to_thread(read_stats, call.services.engine.metrics.registry)


async def openapi(call: Call) -> Any:
    return call.request.app.state.openapi


ENDPOINTS = [
    Endpoint(
        "POST", "/api/v1/session", create_session, None,
        "Exchange a one-time sign-in code (from `fabric portal`) for a session token",
        "session", s.SESSION, s.obj(code=s.STRING, required=("code",)),
    ),
    Endpoint("GET", "/api/v1/me", me, Role.DEVELOPER, "Who the caller is", "session", s.IDENTITY),
    Endpoint(
        "GET", "/api/v1/stats", stats, Role.DEVELOPER,
        "Live figures from the gateway's metrics", "stats", s.STATS,
    ),
    Endpoint(
        "GET", "/api/v1/openapi.json", openapi, Role.DEVELOPER,
        "This document (OpenAPI 3.1)", "meta", {"type": "object"},
    ),
]  # fmt: skip
