"""The Python client's administration methods against a real gateway that verifies
tokens: connections and the catalog through ConnectionService and CatalogService, the
audit naming each token's subject, roles enforced, passwords never returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.client import FabricClient
from fabric.errors import InvalidArgument, NotFound, PermissionDenied, SourceUnavailable
from fabric.security.tokens import TokenConfig, mint_token
from tests.e2e.conftest import Harness, make_shop


def _token(config: TokenConfig, role: str, subject: str) -> str:
    return mint_token(
        config, tenant="default", stage="development", role=role, subject=subject, ttl=300
    )


def test_admin_methods_manage_connections_and_the_catalog(
    secured: tuple[Harness, TokenConfig], tmp_path: Path
) -> None:
    harness, config = secured
    database = tmp_path / "sales.duckdb"
    make_shop(database)
    admin = _token(config, "admin", "alice@example.com")
    developer = _token(config, "developer", "dev@example.com")
    with FabricClient(harness.address, admin, timeout=30) as client:
        created = client.create_connection("sales", "duckdb", {"path": str(database)})
        assert (created.name, created.kind, created.version) == ("sales", "duckdb", 1)
        assert [s.stage for s in created.stages] == ["*"]
        assert not created.stages[0].has_password
        assert "sales" in [c.name for c in client.list_connections()]
        assert client.get_connection("sales").stages[0].settings["path"].string_value == str(
            database
        )
        assert client.test_connection("sales").stage == "development"
        with pytest.raises(InvalidArgument, match="no setting 'pth' \\(did you mean 'path'\\?\\)"):
            client.create_connection("typo", "duckdb", {"pth": str(database)})
        with pytest.raises(SourceUnavailable, match="was not stored"):
            client.create_connection("gone", "duckdb", {"path": str(tmp_path / "none.duckdb")})
        assert "gone" not in [c.name for c in client.list_connections()]
        unverified = client.create_connection(
            "later", "duckdb", {"path": str(tmp_path / "none.duckdb")}, verify=False
        )
        assert unverified.version == 1
        updated = client.update_connection("later", settings={"path": str(database)}, verify=True)
        assert updated.version == 2
        assert client.delete_connection("later") == 0

    with FabricClient(harness.address, developer, timeout=30) as client:
        tables = {f"{t.schema}.{t.name}": t for t in client.discover("sales")}
        assert list(tables["main.orders"].primary_key) == ["id"]
        selected = client.select("sales", "customers", ["name"], "people")
        assert [e.name for e in selected.entities] == ["people"]
        assert [c.name for c in selected.entities[0].columns] == ["id", "name"]
        everything = client.select_all("sales")
        assert {e.name for e in everything.entities} >= {"orders", "payroll"}
        listing = client.list_entities("sales")
        assert listing.catalog_version == everything.catalog_version
        refreshed = client.refresh("sales")
        # nothing changed at the source: nothing changes
        assert refreshed.catalog_version == refreshed.previous_catalog_version
        assert client.unselect("sales", ["payroll"]) > refreshed.catalog_version
        with pytest.raises(PermissionDenied, match="needs the 'admin' role"):
            client.create_connection("nope", "duckdb", {"path": str(database)})
        with pytest.raises(NotFound):
            client.list_entities("no_such_connection")

    with FabricClient(harness.address, admin, timeout=30) as client:
        events = client.list_audit("sales")
    actors = {(e.action, e.actor) for e in events}
    assert ("connection.create", "alice@example.com") in actors
    assert ("catalog.select", "dev@example.com") in actors
    assert ("connection.test", "alice@example.com") in actors
