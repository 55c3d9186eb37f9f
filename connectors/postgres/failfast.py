"""psycopg_pool's pool, told why it cannot connect.

psycopg_pool connects in the background and retries with a back-off; a client waiting
for a connection learns nothing but a timeout, after `pool_timeout` seconds, whether
the server is down, refuses the password or has no such database. This pool remembers
the last failed attempt: one that will not succeed by waiting (authentication, a missing
database) fails every waiting client at once with that error, and so does every later
request until an attempt succeeds again (the pool keeps retrying in the background, so
a password fixed at the server heals by itself).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from connectors.postgres.errors import connect_failure_sqlstate, is_permanent

__all__ = ["FailFastPool"]


class FailFastPool(ConnectionPool[psycopg.Connection[Any]]):
    """A ConnectionPool whose clients fail at once on a connection failure that waiting
    cannot fix; `last_failure` is the last failed attempt's error (None after a success)."""

    last_failure: psycopg.Error | None = None

    @property
    def permanent_failure(self) -> psycopg.Error | None:
        failure = self.last_failure
        if failure is not None and is_permanent(connect_failure_sqlstate(failure)):
            return failure
        return None

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        try:
            conn = super()._connect(timeout)
        except psycopg.Error as exc:
            self.last_failure = exc
            if is_permanent(connect_failure_sqlstate(exc)):
                with self._lock:
                    waiting = list(self._waiting)
                    self._waiting.clear()
                for client in waiting:
                    client.fail(exc)
            raise
        self.last_failure = None
        return conn

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        failure = self.permanent_failure
        if failure is not None and not self.get_stats().get("pool_available", 0):
            raise failure
        return super().getconn(timeout)
