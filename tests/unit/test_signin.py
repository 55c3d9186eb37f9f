"""Portal sign-in codes against a fake clock: one use, short life, no app role, bounded
memory of used codes, and a code is never a bearer token."""

from __future__ import annotations

import secrets

import jwt
import pytest

from fabric.clock import FakeClock
from fabric.context import Role
from fabric.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from fabric.security.signin import (
    MAX_CODE_LIFETIME,
    MAX_SESSION_LIFETIME,
    SIGN_IN_AUDIENCE,
    SIGN_IN_PURPOSE,
    SignInExchange,
    mint_sign_in_code,
)
from fabric.security.tokens import LOCAL_ISSUER, TokenConfig, TokenVerifier

SECRET = secrets.token_bytes(32)
START = 1_800_000_000.0


def _code(clock: FakeClock, role: str = "developer", **kwargs: object) -> str:
    return mint_sign_in_code(
        SECRET,
        tenant="acme",
        stage="development",
        role=role,
        subject="ada@example.com",
        now=clock.time(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_code_is_exchanged_once_for_a_session_the_gateway_accepts() -> None:
    clock = FakeClock(START)
    exchange = SignInExchange(SECRET, clock=clock)
    code = _code(clock)
    session = exchange.exchange(code)
    assert session.expires_at == START + MAX_SESSION_LIFETIME
    gateway = TokenVerifier(TokenConfig.for_local_key(SECRET), clock=clock)
    ctx = gateway.verify(session.token)
    assert (ctx.tenant, ctx.stage, ctx.role, ctx.principal) == (
        "acme",
        "development",
        Role.DEVELOPER,
        "ada@example.com",
    )
    with pytest.raises(Unauthenticated, match="used already"):
        exchange.exchange(code)
    # The code itself is no API token: its audience is not the gateway's.
    with pytest.raises(Unauthenticated, match="another audience"):
        gateway.verify(code)


def test_a_code_expires_within_two_minutes() -> None:
    clock = FakeClock(START)
    exchange = SignInExchange(SECRET, clock=clock)
    code = _code(clock)
    clock.advance(MAX_CODE_LIFETIME + 10)
    with pytest.raises(Unauthenticated, match="not valid or has expired"):
        exchange.exchange(code)
    with pytest.raises(ValueError, match="at most"):
        _code(clock, ttl=MAX_CODE_LIFETIME + 1)


def test_app_codes_are_neither_minted_nor_exchanged() -> None:
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="app tokens cannot sign in"):
        _code(clock, role="app")
    forged_by_hand = jwt.encode(
        {
            "iss": LOCAL_ISSUER,
            "aud": SIGN_IN_AUDIENCE,
            "sub": "app",
            "tenant": "acme",
            "stage": "development",
            "role": "app",
            "purpose": SIGN_IN_PURPOSE,
            "iat": int(START),
            "exp": int(START + 60),
            "jti": "j1",
        },
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(PermissionDenied, match="app tokens cannot sign in"):
        SignInExchange(SECRET, clock=clock).exchange(forged_by_hand)


def test_codes_of_another_key_or_another_purpose_are_refused() -> None:
    clock = FakeClock(START)
    exchange = SignInExchange(SECRET, clock=clock)
    other = mint_sign_in_code(
        secrets.token_bytes(32), tenant="acme", stage="development", role="admin",
        subject="eve", now=START,
    )  # fmt: skip
    with pytest.raises(Unauthenticated):
        exchange.exchange(other)
    api_token = jwt.encode(
        {
            "iss": LOCAL_ISSUER, "aud": SIGN_IN_AUDIENCE, "sub": "eve", "tenant": "acme",
            "stage": "development", "role": "admin", "iat": int(START),
            "exp": int(START + 60), "jti": "j2",
        },
        SECRET,
        algorithm="HS256",
    )  # fmt: skip
    with pytest.raises(Unauthenticated, match="not a portal sign-in code"):
        exchange.exchange(api_token)


def test_used_codes_are_remembered_until_they_expire_and_bounded() -> None:
    clock = FakeClock(START)
    exchange = SignInExchange(SECRET, clock=clock, max_remembered=2)
    exchange.exchange(_code(clock))
    exchange.exchange(_code(clock))
    with pytest.raises(ResourceExhausted) as full:
        exchange.exchange(_code(clock))
    assert full.value.retry_after is not None
    # Once the remembered codes are long expired they are forgotten, and room is made.
    clock.advance(MAX_CODE_LIFETIME + 61)
    exchange.exchange(_code(clock))


def test_sessions_live_at_most_eight_hours() -> None:
    with pytest.raises(ValueError, match="at most"):
        SignInExchange(SECRET, session_lifetime=MAX_SESSION_LIFETIME + 1)
    clock = FakeClock(START)
    session = SignInExchange(SECRET, clock=clock, session_lifetime=600).exchange(_code(clock))
    claims = jwt.decode(session.token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600
