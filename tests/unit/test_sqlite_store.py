"""What only the SQLite metadata store has: files, WAL, foreign keys, `:memory:`.

The behaviour every metadata store shares (connections, versions, selection, audit, no
secret at rest, migrations) is tested once for all stores in
tests/integration/test_metadata_stores.py, which runs its SQLite half without any server.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa
import pytest

from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.model import ColumnInfo, Entity, PhysicalTable, SettingValue

T = "acme"
STAGES: dict[str, dict[str, SettingValue]] = {
    "development": {"path": "/data/dev.duckdb", "read_only": True, "threads": 4}
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetadataStore]:
    with SqliteMetadataStore(tmp_path / "meta.sqlite") as s:
        yield s


def entity(name: str = "orders") -> Entity:
    return Entity(
        name=name,
        schema="main",
        table=name,
        columns=(ColumnInfo("id", "INTEGER", pa.int32(), nullable=False),),
        primary_key=("id",),
    )


def test_file_is_private_in_wal_mode_with_parents_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        assert store.path == str(path)
        store.create_connection(T, "shop", "duckdb", STAGES)
        for file in path.parent.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_foreign_keys_are_enforced(store: SqliteMetadataStore) -> None:
    with store._driver.reading() as session, pytest.raises(sqlite3.IntegrityError):
        session.run(
            "INSERT INTO entities (connection_id, name_key, name, schema_name, table_name,"
            " columns, primary_key, foreign_keys, created_at, updated_at)"
            " VALUES (999, 'x', 'x', 's', 't', '[]', '[]', '[]', '', '')"
        )


def test_memory_store() -> None:
    with SqliteMetadataStore(":memory:") as store:
        store.create_connection(T, "shop", "duckdb", STAGES)
        assert store.select_entities(T, "shop", [entity()]) == 2
        assert [e.action for e in store.list_audit(T)] == ["catalog.select", "connection.create"]


# -- a deleted connection leaves nothing readable ------------------------------------------


def test_a_deleted_connection_cannot_be_read_back_from_the_file_or_its_wal(
    tmp_path: Path,
) -> None:
    """Its settings, its tables' physical names and its columns (selected or only
    recorded) are gone from the database file's pages (free ones included), the
    write-ahead log and its index, as raw bytes: what someone with the files would see.
    What the audit trail keeps by design (names of the connection, stages and entities)
    is not looked for."""
    markers = {
        "setting": "settingMarker4e1d",
        "table": "tableMarker9a7f",
        "column": "columnMarker2c55",
        "unselected": "hiddenMarker7b30",
    }
    path = tmp_path / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        store.create_connection(
            T, "doomed", "duckdb", {"*": {"path": f"/data/{markers['setting']}.duckdb"}}
        )
        store.create_connection(T, "kept", "duckdb", STAGES)
        columns = (
            ColumnInfo("id", "INTEGER", pa.int32(), nullable=False),
            ColumnInfo(markers["column"], "VARCHAR", pa.string()),
        )
        # A wide table: the row spans overflow pages, which a delete frees whole.
        unselected = tuple(
            ColumnInfo(f"{markers['unselected']}_{i}", "VARCHAR", pa.string()) for i in range(300)
        )
        recorded = PhysicalTable("*", "main", markers["table"], (*columns, *unselected), ("id",))
        doomed = Entity(
            "orders",
            "main",
            markers["table"],
            columns,
            ("id",),
            stage_physical=MappingProxyType({recorded.key: recorded}),
        )
        for _ in range(3):  # several versions of the rows, in several WAL frames
            store.select_entities(T, "doomed", [doomed])
            store.select_entities(T, "kept", [entity()])
        files = [path, tmp_path / "meta.sqlite-wal", tmp_path / "meta.sqlite-shm"]
        assert any(markers["column"].encode() in f.read_bytes() for f in files if f.exists())

        store.delete_connection(T, "doomed")

        for what, marker in markers.items():
            holding = [f.name for f in files if f.exists() and marker.encode() in f.read_bytes()]
            assert holding == [], f"the deleted connection's {what} is readable in {holding}"
        # The other connection is whole.
        assert store.catalog(T, "kept").entity("orders") == entity()
