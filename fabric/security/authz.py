"""Who may call what: roles per gRPC method, and the bearer token read from call metadata.

Everything here is a pure function of its arguments, so the gRPC interceptor (or context
provider) that uses it stays a thin adapter:

    ctx = authenticate(method, metadata, verifier)   # None only for PUBLIC_METHODS
    # ... hand ctx to the servicer; nothing below the API layer builds its own.

Rules:

- Roles are ordered `app` < `developer` < `admin`; a method names the least role that may
  call it (`METHOD_ROLES`, then `SERVICE_ROLES` for whole services). A method in neither
  table is refused for every role: new methods are closed until someone opens them.
- Authentication happens before authorization, and both before any pool, catalog or
  database work: a bad token never costs more than a signature check.
- Stage isolation: a request's stage comes only from the verified token (`ctx.stage`).
  No request field selects a stage; where a request names one anyway, `require_stage`
  refuses a mismatch with PERMISSION_DENIED.
- Tenant isolation: every lookup below the API layer is keyed by `ctx.tenant` (metadata
  store, compiled statements, result cache, open statements), so another tenant's
  connection is not found rather than forbidden: its existence is not revealed. Code that
  holds a record with an owner checks it with `require_tenant`, which raises NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from fabric.context import RequestContext, Role
from fabric.errors import NotFound, PermissionDenied, Unauthenticated

__all__ = [
    "AUTHORIZATION_KEY",
    "METHOD_ROLES",
    "PUBLIC_METHODS",
    "ROLE_RANK",
    "SERVICE_ROLES",
    "StageBoundVerifier",
    "TokenVerifierLike",
    "authenticate",
    "authorize",
    "bearer_token",
    "context_from_metadata",
    "is_public",
    "require_role",
    "require_stage",
    "require_tenant",
    "required_role",
    "role_allows",
]

AUTHORIZATION_KEY = "authorization"
"""The gRPC metadata key carrying `Bearer <token>` (gRPC metadata keys are lower case)."""

ROLE_RANK: Mapping[Role, int] = MappingProxyType({Role.APP: 0, Role.DEVELOPER: 1, Role.ADMIN: 2})
"""Each role may do everything the roles ranked below it may."""

METHOD_ROLES: Mapping[str, Role] = MappingProxyType(
    {
        # Runtime apps: query their tenant's selected entities in their stage.
        "/fabric.v1.QueryService/Execute": Role.APP,
        "/fabric.v1.QueryService/OpenStatement": Role.APP,
        "/fabric.v1.QueryService/Fetch": Role.APP,
        "/fabric.v1.QueryService/CloseStatement": Role.APP,
        # The Studio: rows of an entity before it is used in a query.
        "/fabric.v1.QueryService/Preview": Role.DEVELOPER,
        # A plan shows the statements sent to sources, physical table names included.
        "/fabric.v1.QueryService/Explain": Role.DEVELOPER,
    }
)
"""The least role allowed to call a method, by full gRPC method name."""

SERVICE_ROLES: Mapping[str, Role] = MappingProxyType(
    {
        # Discover, select, refresh: the Studio's work.
        "fabric.v1.CatalogService": Role.DEVELOPER,
        # Connections, secrets and keys.
        "fabric.v1.ConnectionService": Role.ADMIN,
        "fabric.v1.KeyService": Role.ADMIN,
        # Arrow Flight SQL: runtime apps query (and read the selection's metadata)
        # through it as through QueryService.
        "arrow.flight.protocol.FlightService": Role.APP,
    }
)
"""The least role for every method of a service not listed in METHOD_ROLES."""

PUBLIC_METHODS: frozenset[str] = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
"""Methods served without a token: load-balancer health checks and API reflection (which
describes the public .proto only, never a tenant's data)."""


class TokenVerifierLike(Protocol):
    """What `context_from_metadata` needs of a verifier (fabric.security.tokens)."""

    def verify(self, token: str) -> RequestContext: ...


class StageBoundVerifier:
    """The verifier of a process that serves one stage (a runtime replica): a token of
    any other stage is refused with PermissionDenied, before any handler runs.

    PERMISSION_DENIED, not UNAUTHENTICATED: the token is genuine (its signature, issuer,
    audience and lifetime were checked first), it is only not valid here; the caller
    must take its calls to its own stage's address, not fetch another token."""

    def __init__(self, verifier: TokenVerifierLike, stage: str) -> None:
        self._verifier = verifier
        self.stage = stage

    def verify(self, token: str) -> RequestContext:
        ctx = self._verifier.verify(token)
        if ctx.stage != self.stage:
            raise PermissionDenied(
                f"this runtime replica serves stage '{self.stage}'; the caller's token is "
                f"for stage '{ctx.stage}': call that stage's own address"
            )
        return ctx


def role_allows(have: Role, needed: Role) -> bool:
    """Whether a caller with role `have` may do what needs role `needed`."""
    return ROLE_RANK[have] >= ROLE_RANK[needed]


def require_role(ctx: RequestContext, needed: Role) -> None:
    """PermissionDenied unless the caller's role is `needed` or above."""
    if not role_allows(ctx.role, needed):
        raise PermissionDenied(
            f"this call needs the '{needed.value}' role or above; "
            f"the caller's token grants '{ctx.role.value}'"
        )


def is_public(method: str) -> bool:
    """Whether `method` is served without authentication."""
    return method in PUBLIC_METHODS


def required_role(method: str) -> Role:
    """The least role that may call `method`; PermissionDenied for an unknown method."""
    role = METHOD_ROLES.get(method)
    if role is not None:
        return role
    service = _service_of(method)
    role = SERVICE_ROLES.get(service) if service else None
    if role is None:
        raise PermissionDenied("this method is not open to any role on this gateway")
    return role


def authorize(method: str, ctx: RequestContext) -> None:
    """PermissionDenied unless the verified caller `ctx` may call `method`."""
    require_role(ctx, required_role(method))


def require_stage(ctx: RequestContext, stage: str) -> None:
    """PermissionDenied when a request names a stage other than its token's."""
    if stage != ctx.stage:
        raise PermissionDenied(
            f"the caller's token is for stage '{ctx.stage}'; it cannot reach another stage"
        )


def require_tenant(ctx: RequestContext, owner: str, what: str) -> None:
    """NotFound when a record owned by `owner` is asked for by another tenant.

    NOT_FOUND, not PERMISSION_DENIED: telling the caller it exists would leak another
    tenant's names. `what` names the kind of thing, never the record ("connection").
    """
    if owner != ctx.tenant:
        raise NotFound(f"{what} not found")


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token in the call's `authorization: Bearer <token>` metadata.

    `metadata` is what grpc gives: `context.invocation_metadata()` or
    `handler_call_details.invocation_metadata` (pairs of key and value). Unauthenticated
    when the header is missing, repeated, not ASCII or not a Bearer credential.
    """
    values: list[str | bytes] = []
    for key, value in metadata or ():
        if isinstance(key, str) and key.lower() == AUTHORIZATION_KEY:
            values.append(value)
    if not values:
        raise Unauthenticated(
            "this call needs a bearer token: send metadata 'authorization: Bearer <token>'"
        )
    if len(values) > 1:
        raise Unauthenticated("send exactly one 'authorization' metadata entry")
    raw = values[0]
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated("the 'authorization' metadata is not ASCII") from None
    scheme, _, token = raw.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated("the 'authorization' metadata must be 'Bearer <token>'")
    return token


def context_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None, verifier: TokenVerifierLike
) -> RequestContext:
    """The verified identity of a call from its metadata; Unauthenticated when there is
    no valid bearer token. Tenant, stage and role come from the token's claims only."""
    return verifier.verify(bearer_token(metadata))


def authenticate(
    method: str,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    verifier: TokenVerifierLike,
) -> RequestContext | None:
    """Authenticate then authorize one call: None for a public method, else the verified
    context. Unauthenticated for a missing or bad token, PermissionDenied for a role that
    may not call `method`. Does no I/O beyond the verifier's signature check."""
    if is_public(method):
        return None
    ctx = context_from_metadata(metadata, verifier)
    authorize(method, ctx)
    return ctx


def _service_of(method: str) -> str | None:
    # "/package.Service/Method" -> "package.Service"
    if not method.startswith("/"):
        return None
    service, slash, name = method[1:].partition("/")
    if not slash or not service or not name or "/" in name:
        return None
    return service
