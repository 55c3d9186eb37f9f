"""PostgreSQL errors as FabricErrors: the SQLSTATE and its condition name, never the
server's message (it can echo values) and never the password."""

from __future__ import annotations

import re

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from connectors import failures
from fabric.errors import FabricError, InternalError, SourceQueryError, SourceUnavailable


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _condition_name(sqlstate: str) -> str:
    """`division_by_zero` for 22012: psycopg's class name for the SQLSTATE, snake-cased."""
    try:
        return _snake(psycopg.errors.lookup(sqlstate).__name__)
    except KeyError:
        return "database_error"


def _source_error(sqlstate: str) -> SourceQueryError:
    return SourceQueryError(
        f"the source refused the query: {_condition_name(sqlstate)} (SQLSTATE {sqlstate})",
        sqlstate=sqlstate,
    )


# Connection-phase failures carry no SQLSTATE in libpq: the server's FATAL text is read
# here (never passed on) to tell them apart, and given the SQLSTATE the server sent.
_CONNECT_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("password authentication failed", "authentication failed"), "28P01"),
    (("no password supplied", "password is required", "fe_sendauth"), "28P01"),
    (('role "',), "28000"),  # role "x" does not exist
    (("no pg_hba.conf entry", "pg_hba.conf rejects"), "28000"),
    (('database "',), "3D000"),  # database "x" does not exist
    (("too many connections", "remaining connection slots"), "53300"),
    (("the database system is starting up", "is not yet accepting connections"), "57P03"),
    (("the database system is shutting down",), "57P01"),
)


def connect_failure_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a failed connection attempt, read from the driver's text (which
    never leaves this function), or None when it names none of the known failures."""
    text = str(exc).lower()
    for needles, sqlstate in _CONNECT_FAILURES:
        if any(needle in text for needle in needles):
            return sqlstate
    return None


def is_permanent(sqlstate: str | None) -> bool:
    """Whether a connection failure will repeat until someone changes the settings
    (authentication, a missing database): waiting or retrying cannot help."""
    return sqlstate is not None and (sqlstate.startswith("28") or sqlstate == "3D000")


def _connection_error(sqlstate: str, where: str) -> FabricError:
    detail = f"{_condition_name(sqlstate)}, SQLSTATE {sqlstate}"
    if sqlstate.startswith("28"):
        return failures.authentication_failed("PostgreSQL", where, detail, sqlstate)
    if sqlstate == "3D000":
        return failures.database_missing("PostgreSQL", where, detail, sqlstate)
    if sqlstate in ("53300", "57P03"):
        return failures.busy("PostgreSQL", where, detail, sqlstate)
    return failures.unreachable("PostgreSQL", where, detail, sqlstate)


def map_error(exc: BaseException, where: str) -> FabricError:
    if isinstance(exc, FabricError):
        return exc
    if isinstance(exc, PoolTimeout):
        return SourceUnavailable(f"no PostgreSQL connection to {where} in time")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        if sqlstate.startswith(("08", "28")) or sqlstate in (
            "3D000",
            "53300",
            "57P01",
            "57P02",
            "57P03",
        ):
            return _connection_error(sqlstate, where)
        if sqlstate == "57014":
            return SourceQueryError(
                "the query was cancelled at the source by someone else: query_canceled "
                "(SQLSTATE 57014)",
                sqlstate=sqlstate,
            )
        return _source_error(sqlstate)
    if isinstance(exc, psycopg.OperationalError):
        found = connect_failure_sqlstate(exc)
        if found is not None:
            return _connection_error(found, where)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return failures.unreachable("PostgreSQL", where)
    if isinstance(exc, psycopg.Error):
        return SourceQueryError(f"the PostgreSQL driver refused the query ({type(exc).__name__})")
    return InternalError(f"unexpected error in the PostgreSQL connector ({type(exc).__name__})")
