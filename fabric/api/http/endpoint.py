"""One description of every REST endpoint (method, path, least role, schemas, handler):
the app's routes and the OpenAPI document are both built from the same list, so the two
cannot disagree. `Services` is what handlers work with: the same engine, platform and
announcements the gRPC servicers use."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from fabric.api.admin_service import RunningQueryAdmin
from fabric.api.http.body import Fields
from fabric.api.http.history import QueryHistory
from fabric.api.query_service import Execute
from fabric.context import RequestContext, Role
from fabric.errors import PermissionDenied
from fabric.messaging.platform_events import Announcements
from fabric.observability.access import AccessLog
from fabric.platform.plane import Platform
from fabric.query.engine import QueryEngine
from fabric.security.authz import TokenVerifierLike
from fabric.security.signin import SignInExchange

Schema = Mapping[str, Any]
"""A JSON Schema (OpenAPI 3.1 dialect)."""

Admission = Callable[[], contextlib.AbstractAsyncContextManager[None]]
"""Admits one call into the gateway's count of calls in flight (refused while it drains)."""

RoleRefusals = Callable[[RequestContext, str, PermissionDenied], None]
"""Records a call refused for the caller's role on the audit trail (blocking)."""


@dataclass(frozen=True, slots=True)
class Services:
    """What the REST handlers call: the gateway's own parts."""

    engine: QueryEngine
    execute: Execute
    platform: Platform
    refreshing: Platform
    """The platform whose listener announces refreshes (as the gRPC CatalogService's)."""
    announcements: Announcements
    admission: Admission
    verifier: TokenVerifierLike | None
    """None: authentication is off, every call is `local_identity`."""
    local_identity: RequestContext
    refusals: RoleRefusals
    sign_in: SignInExchange | None
    history: QueryHistory
    max_body: int
    admin: RunningQueryAdmin
    access: AccessLog
    """Running queries (its `cluster` reaches the runtime replicas once a platform with a
    bus sets it)."""


@dataclass(slots=True)
class Call:
    """One REST call as a handler sees it."""

    request: Request
    services: Services
    caller: RequestContext | None
    """None only for public endpoints (the sign-in exchange)."""
    body: Fields = field(default_factory=lambda: Fields({}))

    @property
    def ctx(self) -> RequestContext:
        assert self.caller is not None, "a public endpoint has no caller"
        return self.caller

    def path(self, name: str) -> str:
        value: str = self.request.path_params[name]
        return value

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when it is not 200 (201 for a creation)."""

    body: Any
    status: int = 200


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    role: Role | None
    """The least role that may call it; None: public (no token)."""
    summary: str
    tag: str
    response: Schema
    request: Schema | None = None
    """The JSON body's schema; None: no body is read."""
    status: int = 200
    query: Mapping[str, Schema] = field(default_factory=dict)
    """Query-string parameters and their schemas."""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@contextlib.asynccontextmanager
async def no_admission() -> AsyncIterator[None]:
    yield
