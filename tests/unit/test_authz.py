"""Authorization rules and bearer metadata: pure functions, no server needed."""

from __future__ import annotations

import jwt
import pytest

from fabric.clock import FakeClock
from fabric.context import RequestContext, Role
from fabric.errors import NotFound, PermissionDenied, Unauthenticated
from fabric.security.authz import (
    METHOD_ROLES,
    PUBLIC_METHODS,
    authenticate,
    authorize,
    bearer_token,
    context_from_metadata,
    require_role,
    require_stage,
    require_tenant,
    required_role,
    role_allows,
)
from fabric.security.tokens import TokenConfig, TokenVerifier, mint_token

NOW = 1_700_000_000
SECRET = b"k" * 32
CONFIG = TokenConfig("fabric-local", "fabric", algorithms=("HS256",), hs256_secret=SECRET)

EXECUTE = "/fabric.v1.QueryService/Execute"
PREVIEW = "/fabric.v1.QueryService/Preview"


def ctx(role: Role, tenant: str = "acme", stage: str = "production") -> RequestContext:
    return RequestContext(tenant=tenant, stage=stage, role=role, principal="p")


def token(role: str = "app", *, tenant: str = "acme", stage: str = "production") -> str:
    return mint_token(
        CONFIG, tenant=tenant, stage=stage, role=role, subject="svc", ttl=300, now=NOW
    )


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(CONFIG, clock=FakeClock(NOW + 1))


@pytest.mark.parametrize(
    ("have", "needed", "allowed"),
    [
        (Role.APP, Role.APP, True),
        (Role.APP, Role.DEVELOPER, False),
        (Role.APP, Role.ADMIN, False),
        (Role.DEVELOPER, Role.APP, True),
        (Role.DEVELOPER, Role.DEVELOPER, True),
        (Role.DEVELOPER, Role.ADMIN, False),
        (Role.ADMIN, Role.APP, True),
        (Role.ADMIN, Role.DEVELOPER, True),
        (Role.ADMIN, Role.ADMIN, True),
    ],
)
def test_role_order(have: Role, needed: Role, allowed: bool) -> None:
    assert role_allows(have, needed) is allowed
    if allowed:
        require_role(ctx(have), needed)
    else:
        with pytest.raises(PermissionDenied, match=f"needs the '{needed.value}' role"):
            require_role(ctx(have), needed)


def test_every_role_is_ranked() -> None:
    for role in Role:
        assert role_allows(role, role)


def test_query_methods() -> None:
    assert required_role(EXECUTE) is Role.APP
    assert required_role("/fabric.v1.QueryService/Fetch") is Role.APP
    assert required_role(PREVIEW) is Role.DEVELOPER
    authorize(EXECUTE, ctx(Role.APP))
    authorize(PREVIEW, ctx(Role.DEVELOPER))
    with pytest.raises(PermissionDenied):
        authorize(PREVIEW, ctx(Role.APP))


def test_every_query_service_method_in_the_proto_has_a_role() -> None:
    from fabric.v1 import query_pb2

    service = query_pb2.DESCRIPTOR.services_by_name["QueryService"]
    for method in service.methods:
        assert f"/fabric.v1.QueryService/{method.name}" in METHOD_ROLES


def test_service_defaults() -> None:
    assert required_role("/fabric.v1.ConnectionService/CreateConnection") is Role.ADMIN
    assert required_role("/fabric.v1.CatalogService/Discover") is Role.DEVELOPER
    with pytest.raises(PermissionDenied):
        authorize("/fabric.v1.ConnectionService/DeleteConnection", ctx(Role.DEVELOPER))


@pytest.mark.parametrize(
    "method",
    [
        "/fabric.v1.QueryService/Unknown",
        "/fabric.v1.Other/Thing",
        "/fabric.v1.QueryService/Execute/extra",
        "fabric.v1.QueryService/Execute",
        "",
        "/",
    ],
)
def test_unknown_methods_are_closed_to_everyone(method: str) -> None:
    with pytest.raises(PermissionDenied, match="not open to any role"):
        authorize(method, ctx(Role.ADMIN))


def test_stage_and_tenant_isolation() -> None:
    dev = ctx(Role.ADMIN, stage="development")
    require_stage(dev, "development")
    with pytest.raises(PermissionDenied, match="stage 'development'"):
        require_stage(dev, "production")
    require_tenant(dev, "acme", "connection")
    with pytest.raises(NotFound, match=r"^connection not found$") as caught:
        require_tenant(dev, "globex", "connection")
    assert "globex" not in str(caught.value)


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer abc.def.ghi")],
        [("authorization", "bearer abc.def.ghi")],
        [("Authorization", "BEARER   abc.def.ghi  ")],
        [("x-other", "1"), ("authorization", b"Bearer abc.def.ghi")],
    ],
)
def test_bearer_token_is_read(metadata: list[tuple[str, str | bytes]]) -> None:
    assert bearer_token(metadata) == "abc.def.ghi"


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        (None, "needs a bearer token"),
        ([], "needs a bearer token"),
        ([("x-token", "Bearer a.b.c")], "needs a bearer token"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer a b")], "must be 'Bearer <token>'"),
        ([("authorization", "a.b.c")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")], "exactly one"),
        ([("authorization", b"Bearer \xff")], "not ASCII"),
    ],
)
def test_bad_authorization_metadata(
    metadata: list[tuple[str, str | bytes]] | None, match: str
) -> None:
    with pytest.raises(Unauthenticated, match=match) as caught:
        bearer_token(metadata)
    assert "dXNlcjpwYXNz" not in str(caught.value)


def test_context_comes_from_the_token_only(verifier: TokenVerifier) -> None:
    metadata = [
        ("authorization", f"Bearer {token('developer', tenant='globex', stage='test')}"),
        # Spoofed identity headers are ignored: only verified claims count.
        ("x-fabric-tenant", "acme"),
        ("x-fabric-role", "admin"),
    ]
    assert context_from_metadata(metadata, verifier) == RequestContext(
        tenant="globex", stage="test", role=Role.DEVELOPER, principal="svc"
    )


def test_authenticate_public_and_protected(verifier: TokenVerifier) -> None:
    for method in PUBLIC_METHODS:
        assert authenticate(method, [], verifier) is None
    with pytest.raises(Unauthenticated):
        authenticate(EXECUTE, [], verifier)
    app = [("authorization", f"Bearer {token('app')}")]
    assert authenticate(EXECUTE, app, verifier) == RequestContext(
        tenant="acme", stage="production", role=Role.APP, principal="svc"
    )
    with pytest.raises(PermissionDenied):
        authenticate(PREVIEW, app, verifier)


def test_invalid_token_is_unauthenticated_before_authorization(verifier: TokenVerifier) -> None:
    # A forged admin token for a method nobody may call: the token is refused first.
    forged = jwt.encode(
        {
            "iss": "fabric-local",
            "aud": "fabric",
            "sub": "x",
            "tenant": "acme",
            "stage": "production",
            "role": "admin",
            "exp": NOW + 60,
        },
        b"not-the-key-not-the-key-not-the-key",
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="signature"):
        authenticate("/fabric.v1.Nope/Nope", [("authorization", f"Bearer {forged}")], verifier)
