"""A terminal session of `fabric sql` driven through a pseudo-terminal (pexpect): a query,
history recall, completion of a column name, a long query with its progress line, and
Ctrl-C cancelling that query at the source (PostgreSQL's pg_stat_activity no longer
shows it)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pexpect
import psycopg
import pytest

FABRIC = [sys.executable, "-m", "fabric.cli"]
LONG_QUERY = "SELECT COUNT(*) AS n FROM people a CROSS JOIN people b CROSS JOIN people c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"fabric_shell_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(
            f"CREATE TABLE {name}.people (id int PRIMARY KEY, name text, country_code text)"
        )
        conn.execute(
            f"INSERT INTO {name}.people SELECT i, 'person ' || i, "
            "(ARRAY['FR', 'DE', 'JP'])[1 + i % 3] FROM generate_series(1, 3000) i"
        )
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def shell_env(tmp_path: Path, postgres_url: str, schema: str) -> Iterator[dict[str, str]]:
    """A gateway (`fabric serve`) over a PostgreSQL connection `pg` selecting `people`."""
    from urllib.parse import urlparse

    url = urlparse(postgres_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path / "home"),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": "0",
        "PAGER": "",
        "TERM": "xterm",
    }
    setup = [
        [
            "connection",
            "create",
            "pg",
            "--kind",
            "postgres",
            "--set",
            f"host={url.hostname}",
            "--set",
            f"port={url.port or 5432}",
            "--set",
            f"database={url.path.lstrip('/')}",
            "--set",
            f"user={url.username}",
            "--local",
        ],
        ["catalog", "select", "pg", f"{schema}.people", "--local"],
    ]
    for args in setup:
        done = subprocess.run(
            [*FABRIC, *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen([*FABRIC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT) as p,
    ):
        try:
            with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            yield env
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)


def _running(postgres_url: str) -> int:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE '%CROSS JOIN%people%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _until(predicate: object, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)  # polling with a deadline
    return False


def test_a_terminal_session_of_the_shell(
    shell_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    shell = pexpect.spawn(
        FABRIC[0],
        [*FABRIC[1:], "sql", "pg", "--history", str(history)],
        env=shell_env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 150),
    )
    try:
        shell.expect("statements end with ';'")
        shell.expect("pg=>")

        # a query, typed over two lines: the statement runs at its ';'
        shell.send("SELECT country_code, COUNT(*) AS n FROM people\r")
        shell.send("GROUP BY country_code ORDER BY country_code;\r")
        shell.expect(r"DE\s+\|\s+1000")
        shell.expect(r"-- 3 rows, [\d.]+ ms in the gateway")
        shell.expect("pg=>")

        # history: Up brings the statement back, Enter runs it again
        shell.send("\x1b[A")
        shell.expect("ORDER BY country_code;")
        shell.send("\r")
        shell.expect(r"-- 3 rows")
        shell.expect("pg=>")
        assert "GROUP BY country_code ORDER BY country_code;" in history.read_text()

        # completion: Tab completes a column name of the selection
        shell.send("SELECT DISTINCT countr")
        shell.send("\t")
        shell.expect("country_code")
        shell.send(" FROM people WHERE id = 3;\r")
        shell.expect(r"country_code\s*\r\n-+\r\n\s*FR")
        shell.expect("-- 1 row,")
        shell.expect("pg=>")

        # a long query: the progress line counts time while it runs at the source
        shell.send(LONG_QUERY + ";\r")
        shell.expect(r"-- running: 0 rows received, \d+\.\d s")
        assert _until(lambda: _running(postgres_url) == 1), "the query never ran at the source"
        # Ctrl-C cancels it, at the source too, and the shell goes on
        shell.sendintr()
        shell.expect("-- cancelled")
        shell.expect("pg=>")
        assert _until(lambda: _running(postgres_url) == 0), "the query still runs at the source"

        shell.send("\\q\r")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0
