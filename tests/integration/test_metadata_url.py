"""FABRIC_METADATA_URL puts the catalog in PostgreSQL, for the CLI and the gateway alike."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg

from fabric.app.parts import open_store
from fabric.catalog.metadata.postgres import PostgresMetadataStore
from fabric.config import Settings


def test_cli_and_gateway_share_a_postgres_catalog(postgres_url: str, tmp_path: Path) -> None:
    schema = f"fabric_meta_{secrets.token_hex(4)}"
    url = f"{postgres_url}?schema={schema}"
    env = {**os.environ, "FABRIC_HOME": str(tmp_path), "FABRIC_METADATA_URL": url}
    try:
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "fabric.cli",
                "connection",
                "create",
                "shared",
                "--kind",
                "duckdb",
                "--set",
                f"path={tmp_path / 'x.duckdb'}",
                "--no-verify",  # no such file: stored, not tested
                "--local",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        store = open_store(Settings.from_env(env))
        try:
            assert isinstance(store, PostgresMetadataStore)
            assert [c.name for c in store.list_connections("default")] == ["shared"]
        finally:
            store.close()
        assert not (tmp_path / "metadata.sqlite").exists()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
