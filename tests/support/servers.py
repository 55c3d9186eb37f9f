"""Where the real servers the tests talk to are, and what to do when one is missing.

A test that needs PostgreSQL uses FABRIC_TEST_POSTGRES_URL when set, else the local
server at 127.0.0.1:5432 (database `test`); MariaDB/MySQL likewise uses
FABRIC_TEST_MARIADB_URL, else 127.0.0.1:3306 (root, database `test`). When none answers
it is skipped with the reason, except under CI=true, where a missing server is a
failure, never a skip.

SQL Server cannot run on the CI machines: its live tests run only when
FABRIC_TEST_MSSQL_URL (`mssql://user:password@host:1433/database`) is set, and are
reported as skipped (not run) with that reason otherwise, even under CI=true.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MARIADB_URL = "mysql://root@127.0.0.1:3306/test"
MSSQL_NOT_SET = (
    "SQL Server not run: FABRIC_TEST_MSSQL_URL is not set (no SQL Server can run here; "
    "point it at one, e.g. mssql://user:password@host:1433/db, to run these live)"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def require_server(url: str, default_port: int, what: str) -> str:
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or default_port
    if _reachable(host, port):
        return url
    reason = f"{what} is not reachable at {host}:{port}"
    if _in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def postgres_url() -> str:
    url = os.environ.get("FABRIC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return require_server(url, 5432, "PostgreSQL")


def mariadb_url() -> str:
    url = os.environ.get("FABRIC_TEST_MARIADB_URL", DEFAULT_MARIADB_URL)
    return require_server(url, 3306, "MariaDB/MySQL")


def mssql_url() -> str:
    """The SQL Server to test against; skipped (reported as not run) when none is set."""
    url = os.environ.get("FABRIC_TEST_MSSQL_URL", "").strip()
    if not url:
        pytest.skip(MSSQL_NOT_SET)
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 1433
    if not _reachable(host, port):
        # it was asked for explicitly: a missing server is a failure, not a skip
        pytest.fail(f"SQL Server at {host}:{port} (FABRIC_TEST_MSSQL_URL) is not reachable")
    return url
