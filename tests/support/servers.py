"""Where the real servers the tests talk to are, and what to do when one is missing.

A test that needs PostgreSQL uses FABRIC_TEST_POSTGRES_URL when set, else the local
server at 127.0.0.1:5432 (database `test`). When none answers it is skipped with the
reason, except under CI=true, where a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


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
