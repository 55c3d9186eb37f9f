"""What connectors over a driver without a pool of its own share (PyMySQL, pymssql): the
server settings every such connection has, and a BoundedPool of driver connections that
are lent per query and reset (rolled back) when given back."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from connectors.base import Connector, ConnectorConfig
from connectors.pool import BoundedPool, PoolTimeout
from fabric.errors import InvalidArgument, SourceUnavailable

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The checked settings of a connection to a database server."""

    host: str
    port: int
    user: str
    seconds: Mapping[str, int | None]
    """The connector's own timeout settings, in whole seconds (None: not set)."""
    pool_min: int
    pool_max: int
    pool_timeout: float

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def server_settings(
    config: ConnectorConfig,
    source: str,
    *,
    default_port: int,
    timeouts: Mapping[str, int | None],
) -> ServerSettings:
    """host and user (required), port, the named timeouts (whole seconds, at least 1; one
    whose default is None may stay unset) and pool_min (0) / pool_max (5) / pool_timeout
    (10 s), checked; InvalidArgument names what is wrong."""
    host = config.get_str("host")
    user = config.get_str("user")
    for name, value in (("host", host), ("user", user)):
        if not value:
            raise InvalidArgument(f"setting {name!r} is required for a {source} connection")
    assert host is not None and user is not None
    try:
        port = config.get_int("port", default_port)
        seconds = {name: config.get_int(name, default) for name, default in timeouts.items()}
        pool_min = config.get_int("pool_min", 0)
        pool_max = config.get_int("pool_max", 5)
        pool_timeout = float(config.settings.get("pool_timeout", 10.0))
    except (TypeError, ValueError):
        names = ", ".join(["port", *timeouts, "pool_min", "pool_max"])
        raise InvalidArgument(f"{names} and pool_timeout must be numbers") from None
    assert port is not None and pool_min is not None and pool_max is not None
    if not 0 < port < 65536:
        raise InvalidArgument("port must be between 1 and 65535")
    if not (0 <= pool_min <= pool_max and pool_max >= 1):
        raise InvalidArgument("pool_min and pool_max must satisfy 0 <= pool_min <= pool_max")
    for name, given in seconds.items():
        if (given is None and timeouts[name] is not None) or (given is not None and given < 1):
            raise InvalidArgument(f"{name} must be at least 1 second")
    return ServerSettings(host, port, user, seconds, pool_min, pool_max, pool_timeout)


class PooledConnector(Connector, Generic[C]):
    """A connector lending driver connections of type C from its BoundedPool. A subclass
    calls `_open_pool` from its constructor and supplies the driver's hooks."""

    source_name: ClassVar[str]
    """The source as messages name it ("MySQL", "SQL Server")."""

    def _open_pool(self, settings: ServerSettings) -> None:
        self._where = settings.where
        self._pool = BoundedPool[C](
            self._connect,
            self._discard,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=settings.pool_timeout,
            check=self._ping,
        )
        self._closed = False

    @abc.abstractmethod
    def _connect(self) -> C:
        """A new connection (errors already FabricErrors)."""

    @abc.abstractmethod
    def _discard(self, conn: C) -> None:
        """Close a connection whose state is unknown or that is no longer wanted."""

    @abc.abstractmethod
    def _ping(self, conn: C) -> bool:
        """Whether a connection idle for a while still works (it may raise)."""

    @abc.abstractmethod
    def _reset(self, conn: C) -> None:
        """Roll back what a query left on the connection; raise when that fails."""

    def _acquire(self) -> C:
        if self._closed:
            raise SourceUnavailable(f"the {self.source_name} connector is closed")
        try:
            return self._pool.acquire()
        except PoolTimeout:
            raise SourceUnavailable(
                f"no {self.source_name} connection to {self._where} within "
                f"{self._pool.timeout:g}s: every pooled connection is busy; try again later "
                "or raise pool_max"
            ) from None

    def _give_back(self, conn: C, *, reuse: bool) -> None:
        """Return a lent connection: reset and pooled when `reuse`, else discarded."""
        if reuse:
            try:
                self._reset(conn)
            except Exception:
                reuse = False
        self._pool.release(conn, reuse=reuse)

    def close(self) -> None:
        self._closed = True
        self._pool.close()
