"""PostgreSQL errors as FabricErrors: the SQLSTATE and its condition name, never the
server's message (it can echo values) and never the password."""

from __future__ import annotations

import re

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

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


def map_error(exc: BaseException, where: str) -> FabricError:
    if isinstance(exc, FabricError):
        return exc
    if isinstance(exc, PoolTimeout):
        return SourceUnavailable(f"no PostgreSQL connection to {where} in time")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300"):
            return SourceUnavailable(
                f"PostgreSQL at {where} is unavailable: {_condition_name(sqlstate)} "
                f"(SQLSTATE {sqlstate}); try again later"
            )
        if sqlstate.startswith("28"):
            return SourceUnavailable(
                f"PostgreSQL at {where} refused the credentials: "
                f"{_condition_name(sqlstate)} (SQLSTATE {sqlstate}); check the user and password"
            )
        if sqlstate == "57014":
            return SourceQueryError(
                "the query was cancelled at the source by someone else: query_canceled "
                "(SQLSTATE 57014)",
                sqlstate=sqlstate,
            )
        return _source_error(sqlstate)
    text = str(exc).lower()  # inspected only, never passed on
    if isinstance(exc, psycopg.OperationalError) and (
        "authentication" in text or "role" in text or "password" in text
    ):
        return SourceUnavailable(
            f"PostgreSQL at {where} refused the credentials; check the user and password"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return SourceUnavailable(
            f"PostgreSQL at {where} cannot be reached or dropped the connection; "
            "check that it is up and the settings are right"
        )
    if isinstance(exc, psycopg.Error):
        return SourceQueryError(f"the PostgreSQL driver refused the query ({type(exc).__name__})")
    return InternalError(f"unexpected error in the PostgreSQL connector ({type(exc).__name__})")
