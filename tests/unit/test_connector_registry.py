"""The connector registry: one registration per kind, and everything per kind derived
from it (connector classes, connection kinds, compiler dialects, function exclusions,
settings checked at create time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlglot import exp

from connectors import connector_class, registry
from connectors.base import ParamStyle
from connectors.registry import (
    ConnectorSpec,
    IdentifierLimit,
    NameUnit,
    SettingSpec,
    SettingType,
)
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.errors import InvalidArgument
from fabric.query.compiler import TARGET_DIALECTS
from fabric.query.functions import dialect_refusal


def test_a_connection_of_a_kind_registered_later_can_be_created(tmp_path: Path) -> None:
    """The registry alone says which kinds exist: nothing else lists them."""
    spec = ConnectorSpec(
        kind="plugin",
        dialect="duckdb",
        param_style=ParamStyle.QMARK,
        connector="connectors.duckdb:DuckDBConnector",
        description="a plug-in kind",
        settings=(),
        identifier_limit=None,
    )
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    try:
        with pytest.raises(InvalidArgument, match="unknown connection kind 'plugin'"):
            store.create_connection("t", "p", "plugin", {"*": {}})
        registry.register(spec)
        try:
            created = store.create_connection("t", "p", "plugin", {"*": {}})
            assert store.get_connection("t", "p").kind == created.kind == "plugin"
        finally:
            registry.unregister("plugin")
    finally:
        store.close()


def test_compiler_targets_are_the_registered_dialects() -> None:
    assert set(registry.dialects()) == TARGET_DIALECTS == {"duckdb", "postgres", "tsql", "mysql"}


@pytest.mark.parametrize("kind", registry.kinds())
def test_connector_class_agrees_with_its_registration(kind: str) -> None:
    spec = registry.get(kind)
    cls = connector_class(kind)
    assert cls is spec.load()
    assert (cls.kind, cls.dialect, cls.param_style) == (kind, spec.dialect, spec.param_style)


def test_unknown_kind_names_the_registered_ones() -> None:
    with pytest.raises(InvalidArgument, match="no connector for kind 'oracle'; available: duckdb"):
        connector_class("oracle")


def test_registering_a_kind_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("duckdb"))


def test_loading_the_registry_imports_no_driver() -> None:
    code = (
        "import sys; import connectors, fabric.query.compiler, fabric.cli; "
        "print(sorted(m for m in ('duckdb', 'psycopg', 'pymysql', 'pymssql') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_function_exclusions_come_from_the_registry() -> None:
    corr = exp.Corr(this=exp.column("x"), expression=exp.column("y"))
    assert dialect_refusal(corr, "mysql") == "has no CORR/COVAR functions"
    assert dialect_refusal(corr, "postgres") is None
    assert registry.excluded_functions("duckdb") == {}


def test_settings_are_checked_and_converted() -> None:
    spec = registry.get("postgres")
    checked = spec.check_settings(
        {"host": "db", "port": 5433, "database": 2024, "user": "u", "pool_timeout": 3}
    )
    assert checked == {
        "host": "db",
        "port": 5433,
        "database": "2024",
        "user": "u",
        "pool_timeout": 3,
    }
    with pytest.raises(
        InvalidArgument, match="no setting 'hots' \\(did you mean 'host'\\?\\); known: host, port"
    ):
        spec.check_settings({"hots": "db", "database": "d", "user": "u"})
    with pytest.raises(InvalidArgument, match="need the setting\\(s\\) host, database"):
        spec.check_settings({"user": "u"})
    assert spec.check_settings({"user": "u"}, complete=False) == {"user": "u"}
    with pytest.raises(InvalidArgument, match="'port' must be an integer"):
        spec.check_settings({"host": "db", "port": "5432x", "database": "d", "user": "u"})
    with pytest.raises(InvalidArgument, match="'password' is a secret"):
        spec.check_settings({"host": "db", "database": "d", "user": "u", "password": "x"})


def test_every_kind_declares_its_settings_with_descriptions() -> None:
    for spec in registry.specs():
        names = [s.name for s in spec.settings]
        assert len(names) == len(set(names)), spec.kind
        assert all(s.description for s in spec.settings), spec.kind
        assert [s.name for s in spec.settings if s.secret] in ([], ["password"]), spec.kind
        assert spec.describe().startswith(f"{spec.kind}: ")


def test_a_setting_spec_converts_by_type() -> None:
    flag = SettingSpec("flag", SettingType.BOOLEAN, "a flag")
    assert flag.convert(True) is True
    with pytest.raises(InvalidArgument, match="'flag' must be true or false"):
        flag.convert(1)
    number = SettingSpec("n", SettingType.NUMBER, "a number")
    assert number.convert(2) == 2 and number.convert(2.5) == 2.5
    with pytest.raises(InvalidArgument, match="must be a number"):
        number.convert(True)
    text = SettingSpec("t", SettingType.STRING, "text")
    assert text.convert(2024) == "2024"
    with pytest.raises(InvalidArgument, match="'t' must be text"):
        text.convert(1.5)


def test_identifier_limit_counts_bytes_characters_or_utf16_units() -> None:
    assert IdentifierLimit(3, unit=NameUnit.BYTES).measure("éé") == 4
    assert IdentifierLimit(3).measure("éé") == 2
    assert IdentifierLimit(3).measure("\U0001f600é") == 2
    assert IdentifierLimit(3, unit=NameUnit.UTF16_UNITS).measure("\U0001f600é") == 3
    limit = IdentifierLimit(64, output_length=255)
    assert (limit.longest(output=True), limit.longest(output=False)) == (255, 64)
    assert IdentifierLimit(63).longest(output=True) == 63


def test_a_new_kind_on_a_known_dialect_is_one_registration() -> None:
    spec = ConnectorSpec(
        kind="test-warehouse",
        dialect="postgres",
        param_style=ParamStyle.FORMAT,
        connector="connectors.postgres:PostgresConnector",
        description="a PostgreSQL-compatible warehouse",
        settings=(),
        identifier_limit=IdentifierLimit(30),
        excluded_functions={exp.Cbrt: "has no CBRT function"},
    )
    registry.register(spec)
    try:
        assert "test-warehouse" in registry.kinds()
        assert registry.dialects().count("postgres") == 1
        cbrt = exp.Cbrt(this=exp.column("x"))
        assert dialect_refusal(cbrt, "postgres") == "has no CBRT function"
        assert IdentifierLimit(30) in registry.identifier_limits("postgres")
    finally:
        registry.unregister("test-warehouse")
    assert dialect_refusal(exp.Cbrt(this=exp.column("x")), "postgres") is None


def test_a_kind_on_a_dialect_without_fabric_rules_gets_the_careful_defaults() -> None:
    from fabric.model import CatalogSnapshot
    from fabric.query.compiler import StatementCompiler
    from tests.unit.test_compiler_golden import sales_catalog

    registry.register(
        ConnectorSpec(
            kind="test-oracle",
            dialect="oracle",
            param_style=ParamStyle.FORMAT,
            connector="connectors.postgres:PostgresConnector",
            description="a dialect the compiler has no rules of its own for",
            settings=(),
            identifier_limit=IdentifierLimit(128),
        )
    )
    catalog: CatalogSnapshot = sales_catalog()
    compiler = StatementCompiler()
    try:
        compiled = compiler.compile(
            "SELECT id FROM orders WHERE status = :s",
            catalog,
            dialect="oracle",
            param_style=ParamStyle.FORMAT,
            max_rows=10,
        )
        assert compiled.sql.startswith('SELECT "orders"."id" FROM "sales"."orders" "orders"')
        with pytest.raises(InvalidArgument, match="DISTINCT ON is not supported on oracle"):
            compiler.compile(
                "SELECT DISTINCT ON (status) id FROM orders",
                catalog,
                dialect="oracle",
                param_style=ParamStyle.FORMAT,
                max_rows=10,
            )
    finally:
        registry.unregister("test-oracle")
    with pytest.raises(InvalidArgument, match="dialect 'oracle' is not supported"):
        compiler.compile(
            "SELECT id FROM orders",
            catalog,
            dialect="oracle",
            param_style=ParamStyle.FORMAT,
            max_rows=10,
        )


def test_a_dialect_sqlglot_does_not_know_is_refused_at_registration() -> None:
    spec = ConnectorSpec(
        kind="test-nowhere",
        dialect="nowhere-sql",
        param_style=ParamStyle.QMARK,
        connector="connectors.duckdb:DuckDBConnector",
        description="",
        settings=(),
        identifier_limit=IdentifierLimit(10),
    )
    with pytest.raises(ValueError, match="sqlglot has no dialect 'nowhere-sql'"):
        registry.register(spec)
    assert "test-nowhere" not in registry.kinds()


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args],
        env={**os.environ, "FABRIC_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_create_help_lists_each_kind_and_its_settings(tmp_path: Path) -> None:
    shown = _cli(tmp_path, "connection", "create", "--help")
    assert shown.returncode == 0, shown.stderr
    for spec in registry.specs():
        assert f"{spec.kind}: {spec.description}" in shown.stdout
    assert "port (integer, default 5432): server port" in shown.stdout


def test_cli_create_refuses_an_unknown_or_mistyped_setting(tmp_path: Path) -> None:
    typo = _cli(tmp_path, "connection", "create", "c", "--kind", "duckdb", "--set", "pth=/x")
    assert typo.returncode == 2
    assert "duckdb connections have no setting 'pth'. Did you mean --set path=...?" in typo.stderr
    mistyped = _cli(tmp_path, "connection", "create", "c", "--kind", "mysql", "--set", "port=abc")
    assert mistyped.returncode == 2
    assert "setting 'port' must be a whole number, not 'abc'" in mistyped.stderr
    listed = _cli(tmp_path, "connection", "list", "--local")
    assert listed.returncode == 0 and listed.stdout == ""
