"""`fabric portal`: a one-time sign-in link for the portal, signed with the local key."""

from __future__ import annotations

from fabric.config import Settings
from fabric.context import Role
from fabric.errors import FailedPrecondition
from fabric.security.signin import MAX_CODE_LIFETIME, mint_sign_in_code
from fabric.security.tokens import LocalKey

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def portal_url(settings: Settings, port: int | None = None, host: str | None = None) -> str:
    """The portal's address: FABRIC_HTTP_LISTEN's host (`localhost` for a wildcard) and
    port (or `port`, when the server chose one), https when TLS is configured."""
    listen_host, _, listen_port = settings.http_listen.rpartition(":")
    listen_host = listen_host.strip("[]")
    host = host or ("localhost" if listen_host in _WILDCARDS else listen_host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{host}:{port or listen_port}"


def sign_in_link(
    settings: Settings,
    *,
    tenant: str,
    stage: str,
    role: Role | str,
    subject: str,
    port: int | None = None,
    host: str | None = None,
) -> str:
    """`<portal>/#signin=<code>`: the code in the fragment, so it never reaches a server
    log; valid once, for MAX_CODE_LIFETIME seconds."""
    if settings.auth != "local":
        raise FailedPrecondition(
            "sign-in links need FABRIC_AUTH=local (the local key signs them); with another "
            "FABRIC_AUTH, sign in to the portal with a bearer token"
        )
    if not settings.http_listen and port is None:
        raise FailedPrecondition(
            "the portal is off: set FABRIC_HTTP_LISTEN (for example 127.0.0.1:8443) for "
            "`fabric serve`"
        )
    if Role(role) is Role.APP:
        raise FailedPrecondition("app tokens cannot sign in to the portal")
    key = LocalKey.load_or_generate(settings.token_key_path)
    code = mint_sign_in_code(
        key.secret, tenant=tenant, stage=stage, role=role, subject=subject,
        ttl=MAX_CODE_LIFETIME,
    )  # fmt: skip
    return f"{portal_url(settings, port, host)}/#signin={code}"
