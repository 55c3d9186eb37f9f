"""What connectors over a driver without a pool of its own share (PyMySQL, pymssql): the
server settings every such connection has, and a BoundedPool of driver connections that
are lent per query and reset (rolled back) when given back."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from connectors.base import Connector, ConnectorConfig, PoolStats
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
    config: ConnectorConfig, source: str, *, timeouts: Sequence[str]
) -> ServerSettings:
    """host, user, port, pool_min, pool_max and pool_timeout (required: the registry's
    declared defaults are filled in first, `ConnectorSpec.with_defaults`) and the named
    timeouts (whole seconds, at least 1, unset when they have no default), checked;
    InvalidArgument names what is wrong."""
    for name in ("host", "user", "port", "pool_min", "pool_max", "pool_timeout"):
        if config.settings.get(name) in (None, ""):
            raise InvalidArgument(f"setting {name!r} is required for a {source} connection")
    try:
        port = config.get_int("port")
        seconds = {name: config.get_int(name) for name in timeouts}
        pool_min = config.get_int("pool_min")
        pool_max = config.get_int("pool_max")
        pool_timeout = float(config.settings["pool_timeout"])
    except (TypeError, ValueError):
        names = ", ".join(["port", *timeouts, "pool_min", "pool_max"])
        raise InvalidArgument(f"{names} and pool_timeout must be numbers") from None
    assert port is not None and pool_min is not None and pool_max is not None
    if not 0 < port < 65536:
        raise InvalidArgument("port must be between 1 and 65535")
    if not (0 <= pool_min <= pool_max and pool_max >= 1):
        raise InvalidArgument("pool_min and pool_max must satisfy 0 <= pool_min <= pool_max")
    for name, given in seconds.items():
        if given is not None and given < 1:
            raise InvalidArgument(f"{name} must be at least 1 second")
    host, user = str(config.settings["host"]), str(config.settings["user"])
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
            alive=self._alive,
        )
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._pool.max_size

    def pool_stats(self) -> PoolStats:
        return PoolStats(*self._pool.figures())

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

    def _alive(self, conn: C) -> bool:
        """Whether an idle connection still looks usable without a round trip (its
        server has not closed it); checked every time before it is lent out."""
        return True

    def _acquire(self, timeout: float | None = None) -> C:
        if self._closed:
            raise SourceUnavailable(f"the {self.source_name} connector is closed")
        wait = self._pool.timeout if timeout is None else min(timeout, self._pool.timeout)
        try:
            return self._pool.acquire(timeout)
        except PoolTimeout:
            raise SourceUnavailable(
                f"no {self.source_name} connection to {self._where} within "
                f"{wait:g}s: every pooled connection is busy; try again later "
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
