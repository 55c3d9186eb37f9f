"""One-time sign-in codes for the portal, exchanged once for a session token.

`fabric portal` (and the demo) mints a code: a JWT signed with the local key whose
audience is `SIGN_IN_AUDIENCE` and whose `purpose` claim is `SIGN_IN_PURPOSE`, valid for
at most `MAX_CODE_LIFETIME` seconds. The gateway's bearer-token verifier refuses it (its
audience is not the gateway's), so a code that leaks from a terminal is no API token.
The portal page sends it once to `POST /api/v1/session`; `SignInExchange` verifies it,
refuses a code already used (its `jti` is remembered until it expires) or one for the
app role (apps do not sign in), and returns a session token with the same tenant, stage,
role and principal, valid for at most `MAX_SESSION_LIFETIME` seconds, which the gateway's
verifier accepts as any local token.
"""

from __future__ import annotations

import math
import secrets
import threading
from dataclasses import dataclass

import jwt

from fabric.clock import SYSTEM_CLOCK, WallClock
from fabric.context import RequestContext, Role
from fabric.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from fabric.security.tokens import LOCAL_ISSUER, TokenConfig, TokenVerifier, mint_token

SIGN_IN_AUDIENCE = "fabric-portal-sign-in"
"""The audience of sign-in codes: not the gateway's, so no API call accepts one."""
SIGN_IN_PURPOSE = "portal-sign-in"
"""The `purpose` claim a sign-in code carries."""
MAX_CODE_LIFETIME = 120.0
"""Seconds a sign-in code is valid for at most."""
MAX_SESSION_LIFETIME = 8 * 3600.0
"""Seconds a portal session token is valid for at most."""
MAX_REMEMBERED_CODES = 10_000
"""Used codes remembered until they expire; with this many unexpired ones, further
sign-ins are refused (RESOURCE_EXHAUSTED) rather than any used code forgotten early."""
APPS_CANNOT_SIGN_IN = "app tokens cannot sign in to the portal; use a developer or admin role"


def _code_config(secret: bytes) -> TokenConfig:
    return TokenConfig.for_local_key(
        secret, audience=SIGN_IN_AUDIENCE, max_lifetime=MAX_CODE_LIFETIME, leeway=5.0
    )


def mint_sign_in_code(
    secret: bytes,
    *,
    tenant: str,
    stage: str,
    role: Role | str,
    subject: str,
    ttl: float = MAX_CODE_LIFETIME,
    now: float | None = None,
) -> str:
    """A one-time sign-in code for the portal, signed with the local key's `secret`.
    ValueError for the app role or a lifetime above MAX_CODE_LIFETIME."""
    if Role(role) is Role.APP:
        raise ValueError(APPS_CANNOT_SIGN_IN)
    if not 0 < ttl <= MAX_CODE_LIFETIME:
        raise ValueError(f"a sign-in code lives at most {MAX_CODE_LIFETIME:g} seconds")
    issued = SYSTEM_CLOCK.time() if now is None else float(now)
    claims = {
        "iss": LOCAL_ISSUER,
        "aud": SIGN_IN_AUDIENCE,
        "sub": subject,
        "tenant": tenant,
        "stage": stage,
        "role": Role(role).value,
        "purpose": SIGN_IN_PURPOSE,
        "iat": int(issued),
        "nbf": int(issued),
        "exp": math.ceil(issued + ttl),
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    expires_at: float
    """Unix seconds."""
    identity: RequestContext


class SignInExchange:
    """Verifies sign-in codes and exchanges each one, once, for a session token."""

    def __init__(
        self,
        secret: bytes,
        *,
        session_lifetime: float = MAX_SESSION_LIFETIME,
        clock: WallClock = SYSTEM_CLOCK,
        max_remembered: int = MAX_REMEMBERED_CODES,
    ) -> None:
        if not 0 < session_lifetime <= MAX_SESSION_LIFETIME:
            raise ValueError(f"a session lives at most {MAX_SESSION_LIFETIME:g} seconds")
        self._secret = secret
        self._clock = clock
        self._session_lifetime = session_lifetime
        # Not cached by token: every code is checked in full, and its jti once.
        self._codes = TokenVerifier(_code_config(secret), clock=clock, verified_cache_size=1)
        self._sessions = TokenConfig.for_local_key(secret, max_lifetime=session_lifetime)
        self._used: dict[str, float] = {}
        self._max_remembered = max_remembered
        self._lock = threading.Lock()

    def exchange(self, code: str) -> Session:
        """The session for `code`: Unauthenticated when it is not a valid, unexpired,
        unused sign-in code; PermissionDenied for the app role."""
        if not isinstance(code, str) or not code:
            raise InvalidArgument("code is required")
        try:
            identity = self._codes.verify(code)
            claims = jwt.decode(code, options={"verify_signature": False})
        except Unauthenticated:
            raise Unauthenticated(
                "the sign-in code is not valid or has expired; run `fabric portal` for a new one"
            ) from None
        jti, purpose, expires = claims.get("jti"), claims.get("purpose"), claims.get("exp")
        if purpose != SIGN_IN_PURPOSE or not isinstance(jti, str) or not jti:
            raise Unauthenticated("the code is not a portal sign-in code")
        if not isinstance(expires, int | float):  # checked by the verifier already
            raise Unauthenticated("the code is not a portal sign-in code")
        if identity.role is Role.APP:
            raise PermissionDenied(APPS_CANNOT_SIGN_IN)
        self._remember(jti, float(expires))
        now = self._clock.time()
        token = mint_token(
            self._sessions,
            tenant=identity.tenant,
            stage=identity.stage,
            role=identity.role,
            subject=identity.principal,
            ttl=self._session_lifetime,
            now=now,
        )
        return Session(token, math.ceil(now + self._session_lifetime), identity)

    def _remember(self, jti: str, expires: float) -> None:
        now = self._clock.time()
        with self._lock:
            if jti in self._used:
                raise Unauthenticated(
                    "the sign-in code was used already; run `fabric portal` for a new one"
                )
            if len(self._used) >= self._max_remembered:
                # Past their expiry (and the verifier's leeway) codes are refused anyway.
                horizon = now - 60.0
                for used, until in list(self._used.items()):
                    if until < horizon:
                        del self._used[used]
            if len(self._used) >= self._max_remembered:
                raise ResourceExhausted(
                    "too many sign-ins in the last minutes; retry shortly", retry_after=60.0
                )
            self._used[jti] = expires
