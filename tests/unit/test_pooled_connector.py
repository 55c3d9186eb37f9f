"""The shared part of MySQL and SQL Server: server settings checked once, and a
PooledConnector lending connections of an in-memory driver double (reset on give-back,
discarded when the reset fails or reuse is refused)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from connectors import registry
from connectors.base import ConnectorConfig, ParamStyle, QueryHandle
from connectors.pooled import PooledConnector, server_settings
from fabric.errors import InvalidArgument, SourceUnavailable
from fabric.model import SettingValue, TableInfo

TIMEOUTS = ("connect_timeout", "read_timeout")
# A MySQL connection's declared defaults stand in for any pooled kind's.
DEFAULTS = registry.get("mysql")


def settings(**values: SettingValue) -> ConnectorConfig:
    return DEFAULTS.with_defaults(
        ConnectorConfig({"host": "db.example", "user": "reader", **values})
    )


def test_server_settings_are_the_declared_defaults() -> None:
    server = server_settings(settings(), "Demo", timeouts=TIMEOUTS)
    assert (server.host, server.port, server.user, server.where) == (
        "db.example",
        3306,
        "reader",
        "db.example:3306",
    )
    assert server.seconds == {"connect_timeout": 10, "read_timeout": None}
    assert (server.pool_min, server.pool_max, server.pool_timeout) == (0, 5, 10.0)


def test_connectors_use_the_defaults_their_registration_declares() -> None:
    """What `fabric connection create --help` shows is what a connection gets."""
    for kind in ("postgres", "mysql", "sqlserver"):
        spec = registry.get(kind)
        declared = {s.name: s.default for s in spec.settings if s.default is not None}
        given = ConnectorConfig({"host": "h", "user": "u", "database": "d"})
        connector = spec.load()(given)
        try:
            for name, default in declared.items():
                assert connector.config.settings[name] == default, (kind, name)
        finally:
            connector.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ConnectorConfig({"user": "reader"}), "'host' is required for a Demo connection"),
        (ConnectorConfig({"host": "db.example"}), "'user' is required for a Demo connection"),
        (ConnectorConfig({"host": "db.example", "user": "r"}), "'port' is required for a Demo"),
        (settings(port="x"), "port, connect_timeout, read_timeout, pool_min, pool_max and"),
        (settings(port=70000), "port must be between 1 and 65535"),
        (settings(pool_min=3, pool_max=2), "pool_min and pool_max"),
        (settings(connect_timeout=0), "connect_timeout must be at least 1 second"),
        (settings(read_timeout=0), "read_timeout must be at least 1 second"),
    ],
)
def test_server_settings_say_what_is_wrong(config: ConnectorConfig, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        server_settings(config, "Demo", timeouts=TIMEOUTS)


class FakeConnection:
    def __init__(self) -> None:
        self.resets = 0
        self.discarded = False
        self.reset_fails = False


class DemoConnector(PooledConnector[FakeConnection]):
    """A pooled connector over an in-memory driver: only the pool's hooks are real."""

    kind: ClassVar[str] = "demo"
    dialect: ClassVar[str] = "postgres"
    param_style: ClassVar[ParamStyle] = ParamStyle.FORMAT
    source_name: ClassVar[str] = "Demo"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        self._open_pool(server_settings(config, self.source_name, timeouts=TIMEOUTS))

    def _connect(self) -> FakeConnection:
        return FakeConnection()

    def _discard(self, conn: FakeConnection) -> None:
        conn.discarded = True

    def _ping(self, conn: FakeConnection) -> bool:
        return True

    def _reset(self, conn: FakeConnection) -> None:
        if conn.reset_fails:
            raise OSError("the socket is gone")
        conn.resets += 1

    def test(self) -> None:
        """Not used here."""

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        return []

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        raise NotImplementedError


def test_a_connection_given_back_for_reuse_is_reset_and_lent_again() -> None:
    connector = DemoConnector(settings())
    conn = connector._acquire()
    connector._give_back(conn, reuse=True)
    assert conn.resets == 1 and not conn.discarded
    assert connector._acquire() is conn


def test_a_connection_is_discarded_when_reuse_is_refused_or_the_reset_fails() -> None:
    connector = DemoConnector(settings())
    refused = connector._acquire()
    connector._give_back(refused, reuse=False)
    assert refused.discarded and refused.resets == 0
    broken = connector._acquire()
    broken.reset_fails = True
    connector._give_back(broken, reuse=True)
    assert broken.discarded
    assert connector._acquire() not in (refused, broken)


def test_a_full_pool_and_a_closed_connector_are_unavailable() -> None:
    connector = DemoConnector(settings(pool_max=1, pool_timeout=0))
    connector._acquire()
    with pytest.raises(SourceUnavailable, match=r"no Demo connection to db\.example:3306"):
        connector._acquire()
    connector.close()
    with pytest.raises(SourceUnavailable, match="the Demo connector is closed"):
        connector._acquire()
