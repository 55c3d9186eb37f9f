"""The connector registry: one registration per connection kind.

It is the one place that knows each kind's dialect, parameter style, declared settings,
capabilities and function exclusions.

Everything per kind derives from here: `connectors.connector_class`, the kinds a
connection may have, the dialects the compiler generates for, the functions a dialect
cannot run, the conformance fixtures and the golden dialect list. A registration names
its connector class by import path and loads it only when asked (`ConnectorSpec.load`),
so a driver nobody uses is never imported.

Adding a connector: its module, one `register(ConnectorSpec(...))` below, and its
conformance fixture in tests/conformance/conftest.py.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from connectors.base import Connector, ConnectorConfig, ParamStyle
from fabric.errors import InvalidArgument
from fabric.model import SettingValue

__all__ = [
    "FULL_SQL_PUSHDOWN",
    "ConnectorSpec",
    "IdentifierLimit",
    "NameUnit",
    "Pushdown",
    "SettingSpec",
    "SettingType",
    "dialects",
    "excluded_functions",
    "get",
    "identifier_limits",
    "kinds",
    "register",
    "specs",
    "unregister",
]


class SettingType(StrEnum):
    """The type of a setting's value."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting a connection of a kind takes, as the CLI's help and create-time
    validation show and check it."""

    name: str
    type: SettingType
    description: str
    required: bool = False
    default: SettingValue | None = None
    """The value the connector uses when the setting is absent (None: no value)."""
    secret: bool = False
    """Held in the secret store and handed to the connector resolved, never kept with
    the settings (the password)."""

    def convert(self, value: SettingValue) -> SettingValue:
        """`value` as this setting's type; InvalidArgument when it is not one. Whole
        numbers are accepted where text or a fractional number is expected (the CLI reads
        `database=2024` as a number)."""
        accepted, expected = _ACCEPTED[self.type]
        if isinstance(value, bool) != (self.type is SettingType.BOOLEAN) or not isinstance(
            value, accepted
        ):
            raise InvalidArgument(f"setting {self.name!r} must be {expected}")
        return str(value) if self.type is SettingType.STRING else value


# Python types a setting of each type accepts (bool apart: it is an int to Python), and
# how a message names the type.
_ACCEPTED: dict[SettingType, tuple[tuple[type, ...], str]] = {
    SettingType.STRING: ((str, int), "text"),
    SettingType.INTEGER: ((int,), "an integer"),
    SettingType.NUMBER: ((int, float), "a number"),
    SettingType.BOOLEAN: ((bool,), "true or false"),
}


class NameUnit(StrEnum):
    """What a source counts when it measures a name."""

    BYTES = "bytes"
    """Bytes of the name in UTF-8 (PostgreSQL, in a UTF8 database)."""
    CHARACTERS = "characters"
    """Unicode code points (MySQL and MariaDB)."""
    UTF16_UNITS = "UTF-16 code units"
    """UTF-16 code units: a character beyond U+FFFF counts twice (SQL Server's `sysname`
    is `nvarchar(128)`)."""


@dataclass(frozen=True, slots=True)
class IdentifierLimit:
    """What names a source keeps as written. PostgreSQL counts bytes and cuts a longer
    name silently, MariaDB cuts an output name silently at 255 characters (a result
    column would come back renamed, or two names cut alike collide: SQLSTATE 42702 or
    42712); the others fail the query."""

    length: int
    """Every name but output column names: CTEs, table and subquery aliases, column
    alias lists, window names, and the names the query refers to."""
    output_length: int | None = None
    """Output column names (`AS name`), when the source keeps them longer than `length`."""
    unit: NameUnit = NameUnit.CHARACTERS
    bmp_only: bool = False
    """Names may not hold a character beyond U+FFFF (MySQL and MariaDB refuse them)."""

    def measure(self, name: str) -> int:
        if self.unit is NameUnit.BYTES:
            return len(name.encode("utf-8", "surrogatepass"))
        if self.unit is NameUnit.UTF16_UNITS:
            return len(name.encode("utf-16-le", "surrogatepass")) // 2
        return len(name)

    def longest(self, *, output: bool) -> int:
        """The longest name of that sort the source keeps."""
        return (self.output_length or self.length) if output else self.length


@dataclass(frozen=True, slots=True)
class Pushdown:
    """What a federated query may push down to a source, Trino-style: an ability absent
    here stays with the engine (DuckDB). Every source is sent at least a scan of the
    columns the query needs."""

    filters: bool = False
    """WHERE conditions on the source's own columns, parameters bound."""
    joins: bool = False
    """Inner joins among the source's own entities, sent as one statement."""
    aggregates: bool = False
    """GROUP BY and aggregate functions over the source's own entities."""
    subqueries: bool = False
    """A whole (uncorrelated) subquery over the source's entities alone: derived tables,
    CTE bodies, IN and scalar subqueries, sent as they are written."""
    max_parameters: int = 0
    """Bound parameters one statement may carry: the bound of a dynamic filter's IN list
    (0: no dynamic filters)."""


FULL_SQL_PUSHDOWN = Pushdown(
    filters=True, joins=True, aggregates=True, subqueries=True, max_parameters=30_000
)
"""A SQL database that runs everything Fabric SQL says."""


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    """Everything the gateway knows about one connection kind without loading its driver."""

    kind: str
    """The connection kind (`duckdb`, `postgres`, ...), as connections and the CLI name it."""
    dialect: str
    """The sqlglot dialect the compiler generates for this source."""
    param_style: ParamStyle
    """Placeholder style of the driver."""
    connector: str
    """Import path of the connector class, `module:Class`, imported on first use."""
    description: str
    settings: tuple[SettingSpec, ...]
    identifier_limit: IdentifierLimit | None
    """Names the query introduces (aliases, CTE names) longer than this are refused by
    the compiler rather than cut or failed by the source; None when it has no limit."""
    excluded_functions: Mapping[type[exp.Expr], str] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Functions allowed in Fabric SQL that this source cannot run faithfully, with why
    (the reason completes "<dialect> ...")."""
    pushdown: Pushdown = field(default_factory=lambda: Pushdown())
    """What a federated query may send to this source (`fabric.query.federation`); by
    default nothing beyond a scan of the columns it needs."""

    def load(self) -> type[Connector]:
        """The connector class (importing its module, and so its driver, now)."""
        module_name, _, class_name = self.connector.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TypeError(f"{self.connector} is not a Connector class")
        return cls

    def describe(self) -> str:
        """The kind and its settings as help text, one setting a line."""
        lines = [f"{self.kind}: {self.description}"]
        for s in self.settings:
            notes = ["required" if s.required else None, "secret" if s.secret else None]
            if s.default is not None:
                notes.append(f"default {s.default}")
            note = ", ".join(n for n in notes if n)
            lines.append(
                f"  {s.name} ({s.type.value}{', ' + note if note else ''}): {s.description}"
            )
        return "\n".join(lines)

    def with_defaults(self, config: ConnectorConfig) -> ConnectorConfig:
        """`config` with every declared default filled in where the setting is absent:
        the connector reads its defaults from here, so what `describe` shows is what a
        connection gets."""
        declared = {s.name: s.default for s in self.settings if s.default is not None}
        return ConnectorConfig({**declared, **config.settings}, config.password)

    def setting(self, name: str) -> SettingSpec | None:
        for setting in self.settings:
            if setting.name == name:
                return setting
        return None

    def check_settings(
        self, settings: Mapping[str, SettingValue], *, complete: bool = True
    ) -> dict[str, SettingValue]:
        """`settings` checked against the declared ones and converted to their types;
        InvalidArgument naming an unknown, secret or mistyped setting, or (when
        `complete`) a missing required one."""
        checked: dict[str, SettingValue] = {}
        for name, value in settings.items():
            declared = self.setting(name)
            if declared is None:
                names = [s.name for s in self.settings if not s.secret]
                near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise InvalidArgument(
                    f"{self.kind} connections have no setting {name!r}{hint}; "
                    f"known: {', '.join(names)}"
                )
            if declared.secret:
                raise InvalidArgument(
                    f"setting {name!r} is a secret: give it through the secret store "
                    "(the CLI's --password-stdin or --password-prompt), never as a setting"
                )
            checked[name] = declared.convert(value)
        missing = [s.name for s in self.settings if s.required and s.name not in checked]
        if complete and missing:
            raise InvalidArgument(
                f"{self.kind} connections need the setting(s) {', '.join(missing)}"
            )
        return checked


_REGISTRY: dict[str, ConnectorSpec] = {}


@dataclass(frozen=True, slots=True)
class _DialectRules:
    """What every kind generating one dialect requires of it, merged (the compiler reads
    it per query, so it is derived once per registry change, not per call)."""

    excluded_functions: Mapping[type[exp.Expr], str]
    identifier_limits: tuple[IdentifierLimit, ...]


_NO_RULES = _DialectRules(MappingProxyType({}), ())
_dialects: tuple[str, ...] = ()
_rules: dict[str, _DialectRules] = {}


def _derive() -> None:
    global _dialects, _rules
    dialects = tuple(dict.fromkeys(spec.dialect for spec in _REGISTRY.values()))
    rules: dict[str, _DialectRules] = {}
    for dialect in dialects:
        using = [spec for spec in _REGISTRY.values() if spec.dialect == dialect]
        excluded: dict[type[exp.Expr], str] = {}
        for spec in using:
            for function, reason in spec.excluded_functions.items():
                excluded.setdefault(function, reason)
        limits = (s.identifier_limit for s in using if s.identifier_limit is not None)
        rules[dialect] = _DialectRules(MappingProxyType(excluded), tuple(dict.fromkeys(limits)))
    _dialects, _rules = dialects, rules


def register(spec: ConnectorSpec) -> ConnectorSpec:
    """Add a kind; ValueError when the kind is already registered or sqlglot does not
    know its dialect."""
    if spec.kind in _REGISTRY:
        raise ValueError(f"connector kind {spec.kind!r} is already registered")
    if Dialect.get(spec.dialect) is None:
        raise ValueError(f"sqlglot has no dialect {spec.dialect!r}")
    _REGISTRY[spec.kind] = spec
    _derive()
    return spec


def unregister(kind: str) -> None:
    """Remove a kind (a plug-in's tests); nothing happens when it is not registered."""
    if _REGISTRY.pop(kind, None) is not None:
        _derive()


def get(kind: str) -> ConnectorSpec:
    """The registration of `kind`; InvalidArgument naming the known kinds if there is none."""
    found = _REGISTRY.get(kind)
    if found is None:
        raise InvalidArgument(f"no connector for kind {kind!r}; available: {', '.join(_REGISTRY)}")
    return found


def specs() -> tuple[ConnectorSpec, ...]:
    """Every registration, in registration order."""
    return tuple(_REGISTRY.values())


def kinds() -> tuple[str, ...]:
    """Every registered kind, in registration order."""
    return tuple(_REGISTRY)


def dialects() -> tuple[str, ...]:
    """The sqlglot dialects of the registered kinds, each once, in registration order."""
    return _dialects


def excluded_functions(dialect: str) -> Mapping[type[exp.Expr], str]:
    """The functions `dialect` cannot run, with why: those of every kind generating it."""
    return _rules.get(dialect, _NO_RULES).excluded_functions


def identifier_limits(dialect: str) -> tuple[IdentifierLimit, ...]:
    """The identifier limits of every kind generating `dialect` (a name must fit them all)."""
    return _rules.get(dialect, _NO_RULES).identifier_limits


# -- the built-in connectors ----------------------------------------------------------------


def _host(default_port: int) -> tuple[SettingSpec, ...]:
    return (
        SettingSpec("host", SettingType.STRING, "server host name or address", required=True),
        SettingSpec("port", SettingType.INTEGER, "server port", default=default_port),
        SettingSpec("user", SettingType.STRING, "user to log in as", required=True),
        SettingSpec(
            "password",
            SettingType.STRING,
            "the user's password, kept in the secret store",
            secret=True,
        ),
    )


def _pool(pool_min: int, pool_max: int, pool_timeout: float | None) -> tuple[SettingSpec, ...]:
    return (
        SettingSpec(
            "pool_min", SettingType.INTEGER, "connections kept open when idle", default=pool_min
        ),
        SettingSpec("pool_max", SettingType.INTEGER, "most connections open", default=pool_max),
        SettingSpec(
            "pool_timeout",
            SettingType.NUMBER,
            "seconds to wait for a free connection"
            + (" (default: connect_timeout)" if pool_timeout is None else ""),
            default=pool_timeout,
        ),
        SettingSpec(
            "application_name",
            SettingType.STRING,
            "name the server shows for Fabric's sessions",
            default="fabric",
        ),
    )


_NO_STATISTICS = "has no CORR/COVAR functions"
# What neither MySQL/MariaDB nor SQL Server has; each adds its own below.
_MISSING_IN_MYSQL_AND_SQLSERVER: Mapping[type[exp.Expr], str] = {
    exp.Corr: _NO_STATISTICS,
    exp.CovarPop: _NO_STATISTICS,
    exp.CovarSamp: _NO_STATISTICS,
    exp.Cbrt: "has no CBRT function",
    exp.StartsWith: "has no STARTS_WITH function",
}

register(
    ConnectorSpec(
        kind="duckdb",
        dialect="duckdb",
        param_style=ParamStyle.QMARK,
        connector="connectors.duckdb:DuckDBConnector",
        description="a DuckDB database file, opened read-only",
        settings=(
            SettingSpec(
                "path",
                SettingType.STRING,
                "the database file (`:memory:` for an empty in-memory database)",
                required=True,
            ),
        ),
        identifier_limit=None,  # names of any length are kept whole
        pushdown=FULL_SQL_PUSHDOWN,
    )
)

register(
    ConnectorSpec(
        kind="postgres",
        dialect="postgres",
        param_style=ParamStyle.FORMAT,
        connector="connectors.postgres:PostgresConnector",
        description="PostgreSQL",
        settings=(
            *_host(5432),
            SettingSpec("database", SettingType.STRING, "database name", required=True),
            SettingSpec("connect_timeout", SettingType.INTEGER, "seconds to connect", default=10),
            SettingSpec(
                "sslmode", SettingType.STRING, "libpq sslmode (disable, require, verify-full, ...)"
            ),
            *_pool(1, 10, None),
        ),
        identifier_limit=IdentifierLimit(63, unit=NameUnit.BYTES),
        # A statement carries at most 65535 parameters (the protocol's count is 16 bits).
        pushdown=FULL_SQL_PUSHDOWN,
    )
)

register(
    ConnectorSpec(
        kind="sqlserver",
        dialect="tsql",
        param_style=ParamStyle.FORMAT,
        connector="connectors.sqlserver:SqlServerConnector",
        description="Microsoft SQL Server",
        settings=(
            *_host(1433),
            SettingSpec("database", SettingType.STRING, "database name"),
            SettingSpec("login_timeout", SettingType.INTEGER, "seconds to log in", default=10),
            SettingSpec(
                "timeout",
                SettingType.INTEGER,
                "seconds any driver call may take when the query has no deadline",
                default=300,
            ),
            SettingSpec("encryption", SettingType.STRING, "TLS: 'off', 'request' or 'require'"),
            SettingSpec("tds_version", SettingType.STRING, "TDS protocol version", default="7.4"),
            *_pool(0, 5, 10.0),
        ),
        identifier_limit=IdentifierLimit(128, unit=NameUnit.UTF16_UNITS),
        # A request carries at most 2100 parameters.
        pushdown=replace(FULL_SQL_PUSHDOWN, max_parameters=2_000),
        # No SQL Server runs here: these follow its documentation, failing closed where a
        # function exists only in recent releases.
        excluded_functions=MappingProxyType(
            {
                **_MISSING_IN_MYSQL_AND_SQLSERVER,
                exp.NthValue: "has no NTH_VALUE function",
                exp.LogicalAnd: "has no BOOL_AND (no boolean type)",
                exp.LogicalOr: "has no BOOL_OR (no boolean type)",
                exp.DateTrunc: "has DATETRUNC only from SQL Server 2022",
                exp.TimestampTrunc: "has DATETRUNC only from SQL Server 2022",
                exp.Greatest: "has GREATEST only from SQL Server 2022",
                exp.Least: "has LEAST only from SQL Server 2022",
            }
        ),
    )
)

register(
    ConnectorSpec(
        kind="mysql",
        dialect="mysql",
        param_style=ParamStyle.FORMAT,
        connector="connectors.mysql:MySQLConnector",
        description="MySQL or MariaDB",
        settings=(
            *_host(3306),
            SettingSpec("database", SettingType.STRING, "default database"),
            SettingSpec("connect_timeout", SettingType.INTEGER, "seconds to connect", default=10),
            SettingSpec(
                "read_timeout", SettingType.INTEGER, "seconds a read from the server may take"
            ),
            SettingSpec(
                "charset", SettingType.STRING, "connection character set", default="utf8mb4"
            ),
            SettingSpec(
                "zero_dates",
                SettingType.STRING,
                "a zero date ('0000-00-00') reads as 'null' or fails the query ('error')",
                default="null",
            ),
            SettingSpec("ssl_ca", SettingType.STRING, "CA certificate file for TLS"),
            *_pool(0, 5, 10.0),
        ),
        identifier_limit=IdentifierLimit(64, output_length=255, bmp_only=True),
        pushdown=FULL_SQL_PUSHDOWN,
        # Each entry was run on MariaDB 10.11 through the compiler's MySQL output
        # (tests/integration/test_functions_per_dialect.py keeps it honest).
        excluded_functions=MappingProxyType(
            {
                **_MISSING_IN_MYSQL_AND_SQLSERVER,
            }
        ),
    )
)
