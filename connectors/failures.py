"""Why a source could not be used, told apart the same way for every connector.

    authentication failed   -> FailedPrecondition (retrying will not help: fix the login)
    database missing        -> FailedPrecondition (fix the `database` setting)
    unreachable             -> SourceUnavailable  (down, refused, no route; retry later)
    busy                    -> SourceUnavailable  (the server refuses more sessions)
    pool exhausted          -> SourceUnavailable  (every pooled connection stayed busy)

Each message names the source and where it is (host:port), the driver's condition name
and SQLSTATE or error number where there is one, and what to do; never the server's own
text, which can echo names and values.
"""

from __future__ import annotations

from fabric.errors import FailedPrecondition, SourceUnavailable

__all__ = [
    "authentication_failed",
    "busy",
    "database_missing",
    "pool_exhausted",
    "unreachable",
]


def _detail(detail: str) -> str:
    return f" ({detail})" if detail else ""


def authentication_failed(
    source: str, where: str, detail: str = "", sqlstate: str | None = None
) -> FailedPrecondition:
    return FailedPrecondition(
        f"{source} at {where} refused the login: authentication failed{_detail(detail)}; "
        "check the connection's user and password (fabric connection update NAME "
        "--password-prompt)",
        sqlstate=sqlstate,
    )


def database_missing(
    source: str, where: str, detail: str = "", sqlstate: str | None = None
) -> FailedPrecondition:
    return FailedPrecondition(
        f"{source} at {where} has no database by the name in the connection's settings, "
        f"or the user may not open it{_detail(detail)}; check the `database` setting",
        sqlstate=sqlstate,
    )


def unreachable(
    source: str, where: str, detail: str = "", sqlstate: str | None = None
) -> SourceUnavailable:
    return SourceUnavailable(
        f"{source} at {where} cannot be reached or dropped the connection{_detail(detail)}; "
        "check that it is up and that the host and port settings are right",
        sqlstate=sqlstate,
    )


def busy(
    source: str, where: str, detail: str = "", sqlstate: str | None = None
) -> SourceUnavailable:
    return SourceUnavailable(
        f"{source} at {where} is up but refuses new sessions{_detail(detail)} (too many "
        "connections, starting up or shutting down); try again later",
        sqlstate=sqlstate,
    )


def pool_exhausted(source: str, where: str, seconds: float, size: int) -> SourceUnavailable:
    return SourceUnavailable(
        f"every one of the {size} pooled connections to {source} at {where} stayed busy for "
        f"{seconds:g}s; try again, or raise the connection's pool_max"
    )
