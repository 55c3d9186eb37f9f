"""A password-protected PostgreSQL: the password is sealed in the secret store, used by
the gateway, and found nowhere at rest in clear; a wrong password is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import configured_gateway
from fabric.app.parts import local_token, open_secret_store, open_store
from fabric.client import FabricClient
from fabric.config import Settings
from tests.support.leaks import files_containing
from tests.support.pg_instance import PgInstance, private_postgres

PASSWORD = "Canary-Pass-4d9e1b"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgInstance]:
    with private_postgres(PASSWORD) as instance:
        with psycopg.connect(instance.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
            conn.execute("INSERT INTO accounts VALUES (1, 'ann'), (2, 'bob')")
        yield instance


def _fabric(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI on `home`'s stores (--local: no gateway runs in these tests)."""
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args, "--local"],
        input=stdin,
        env={**os.environ, "FABRIC_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _register(
    home: Path, name: str, pg: PgInstance, password: str, *options: str
) -> subprocess.CompletedProcess[str]:
    done = _fabric(
        home,
        "connection",
        "create",
        name,
        *options,
        "--kind",
        "postgres",
        "--set",
        "host=127.0.0.1",
        "--set",
        f"port={pg.port}",
        "--set",
        "database=postgres",
        "--set",
        f"user={pg.user}",
        "--password-stdin",
        stdin=password + "\n",
    )
    assert password not in done.stdout + done.stderr
    return done


def test_password_is_sealed_used_and_never_at_rest_in_clear(pg: PgInstance, tmp_path: Path) -> None:
    created = _register(tmp_path, "vault", pg, PASSWORD)
    assert created.returncode == 0, created.stderr
    tested = _fabric(tmp_path, "connection", "test", "vault")
    assert tested.returncode == 0, tested.stderr
    selected = _fabric(tmp_path, "catalog", "select", "vault", "public.accounts")
    assert selected.returncode == 0, selected.stderr

    settings = Settings(home=tmp_path, metrics_port=0)
    store, secrets = open_store(settings), open_secret_store(settings)
    try:
        gateway_under_test = configured_gateway(settings, store, secrets=secrets.get)
        with (
            BackgroundGateway(gateway_under_test) as gateway,
            FabricClient(gateway.address, local_token(settings), timeout=30) as client,
        ):
            rows = client.query("vault", "SELECT owner FROM accounts ORDER BY id").to_pylist()
        assert rows == [{"owner": "ann"}, {"owner": "bob"}]
        assert secrets.refs() == ["connections/default/vault/all"]
    finally:
        store.close()
    assert files_containing(tmp_path, PASSWORD) == []

    deleted = _fabric(tmp_path, "connection", "delete", "vault")
    assert deleted.returncode == 0, deleted.stderr
    assert open_secret_store(settings).refs() == []


def test_wrong_password_is_a_clear_error_without_the_password(
    pg: PgInstance, tmp_path: Path
) -> None:
    wrong = "Wrong-Guess-77aa"
    refused = _register(tmp_path, "bad", pg, wrong)  # tested on create: nothing stored
    assert refused.returncode == 2
    assert "authentication failed" in refused.stderr and "was not stored" in refused.stderr
    assert "--no-verify" in refused.stderr and "Traceback" not in refused.stderr
    assert _fabric(tmp_path, "connection", "list").stdout == ""
    stored = _register(tmp_path, "bad", pg, wrong, "--no-verify")
    assert stored.returncode == 0, stored.stderr
    tested = _fabric(tmp_path, "connection", "test", "bad")
    assert tested.returncode == 2
    assert "failed_precondition" in tested.stderr and "authentication failed" in tested.stderr
    assert wrong not in tested.stderr and PASSWORD not in tested.stderr
    assert files_containing(tmp_path, wrong) == []


def test_duplicate_name_does_not_touch_the_existing_password(
    pg: PgInstance, tmp_path: Path
) -> None:
    _register(tmp_path, "main", pg, PASSWORD)
    again = _fabric(
        tmp_path,
        "connection",
        "create",
        "main",
        "--kind",
        "postgres",
        "--set",
        "host=127.0.0.1",
        "--no-verify",
        "--password-stdin",
        stdin="other-password\n",
    )
    assert again.returncode == 2 and "already_exists" in again.stderr
    assert _fabric(tmp_path, "connection", "test", "main").returncode == 0
